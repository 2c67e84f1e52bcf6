"""The shared training loop: batch plans, NaN guard, checkpoints, metrics, with a small regression task."""

from __future__ import annotations

import json
import os
import signal
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.cluster.requeue_jobs import loop_config
from workflow_scripts.train import stop
from workflow_scripts.train.batches import BatchPlan
from workflow_scripts.train.config import LoopConfig
from workflow_scripts.train.loop import NonFiniteLossError, StagePaths, train
from workflow_scripts.train.metrics import MetricsLog, read


def _loop(steps=6, every=2) -> LoopConfig:
    return loop_config(steps, every, keep_last=2)


@dataclass
class Regression:
    """Fit y = 3x - 1 from a fixed dataset; optionally produce NaN from some step on."""

    plan: BatchPlan
    nan_from_step: int | None = None
    name: str = "regression"

    def trainable(self):
        torch.manual_seed(0)
        return torch.nn.Linear(1, 1)

    def micro_batches(self, step, rank, world):
        return [
            torch.tensor([[float(s.index)] for s in chunk])
            for chunk in self.plan.micro_batches(step, rank, world)
        ]

    def loss(self, model, x, step):
        loss = ((model(x / 10) - (3 * x / 10 - 1)) ** 2).mean()
        if self.nan_from_step is not None and step + 1 >= self.nan_from_step:
            loss = loss * float("nan")
        return loss, {"x_mean": float(x.mean())}

    def export(self, model, out_dir: Path, *, final: bool):
        from safetensors.torch import save_file

        out_dir.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, out_dir / "model.safetensors")


def _paths(root: Path) -> StagePaths:
    return StagePaths(root / "checkpoints", root / "metrics.jsonl", root / "final")


def test_batch_plan_gives_the_same_global_batch_for_any_world_size():
    plan = BatchPlan(num_samples=10, batch_size=8, micro_batch_size=2, seed=3)
    for step in range(5):
        one = [s for chunk in plan.micro_batches(step, 0, 1) for s in chunk]
        two = [s for r in range(2) for chunk in plan.micro_batches(step, r, 2) for s in chunk]
        four = [s for r in range(4) for chunk in plan.micro_batches(step, r, 4) for s in chunk]
        assert sorted(one, key=lambda s: s.position) == sorted(two, key=lambda s: s.position)
        assert sorted(one, key=lambda s: s.position) == sorted(four, key=lambda s: s.position)
    # every sample is seen once per epoch
    positions = range(0, 10)
    assert sorted(plan.index(p) for p in positions) == list(range(10))
    with pytest.raises(ValueError, match="evenly"):
        plan.micro_batches(0, 0, 3)


def test_training_learns_checkpoints_and_logs(tmp_path):
    plan = BatchPlan(16, 4, 2, seed=0)
    summary = train(Regression(plan), _loop(steps=60, every=10), _paths(tmp_path), identity="a")
    rows = read(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in rows] == list(range(1, 61))
    first, last = (sum(r["loss"] for r in part) / 5 for part in (rows[:5], rows[-5:]))
    assert last < 0.1 * first
    assert {"lr", "grad_norm", "samples_per_second", "x_mean"} <= set(rows[0])
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step_00000050", "step_00000060"]
    assert summary == {"steps": 60, "resumed_from": 0, "world_size": 1}
    assert (tmp_path / "final" / "model.safetensors").exists()
    # every checkpoint carries the model as the stage exports it
    at_50 = load_file(tmp_path / "checkpoints/step_00000050/model/model.safetensors")
    at_60 = load_file(tmp_path / "checkpoints/step_00000060/model/model.safetensors")
    final = load_file(tmp_path / "final/model.safetensors")
    assert all(torch.equal(at_60[k], final[k]) for k in final)
    assert not all(torch.equal(at_50[k], final[k]) for k in final)


def test_resume_equals_uninterrupted(tmp_path):
    plan = BatchPlan(16, 4, 2, seed=0)
    train(Regression(plan), _loop(steps=8, every=2), _paths(tmp_path / "full"), identity="a")
    # a run that stopped after step 4 (its checkpoint is the newest), then resumed
    train(Regression(plan), _loop(steps=4, every=2), _paths(tmp_path / "cut"), identity="a")
    summary = train(Regression(plan), _loop(steps=8, every=2), _paths(tmp_path / "cut"), identity="a")
    assert summary["resumed_from"] == 4
    full, cut = (
        load_file(tmp_path / "full/final/model.safetensors"),
        load_file(tmp_path / "cut/final/model.safetensors"),
    )
    assert all(torch.equal(full[k], cut[k]) for k in full)
    assert read(tmp_path / "full/metrics.jsonl") != [] and [
        r["loss"] for r in read(tmp_path / "full/metrics.jsonl")
    ] == [r["loss"] for r in read(tmp_path / "cut/metrics.jsonl")]


def test_nan_loss_stops_with_a_clear_error_and_keeps_the_last_good_checkpoint(tmp_path):
    plan = BatchPlan(16, 4, 2, seed=0)
    with pytest.raises(NonFiniteLossError) as err:
        train(Regression(plan, nan_from_step=6), _loop(steps=10, every=2), _paths(tmp_path), identity="a")
    message = str(err.value)
    assert "at step 6" in message and "step_00000004" in message and "(step 4)" in message
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step_00000002", "step_00000004"]
    assert not (tmp_path / "final").exists()
    assert [r["step"] for r in read(tmp_path / "metrics.jsonl")] == [1, 2, 3, 4, 5]


def test_checkpoints_of_another_identity_are_set_aside(tmp_path):
    plan = BatchPlan(16, 4, 2, seed=0)
    train(Regression(plan), _loop(steps=4, every=2), _paths(tmp_path), identity="old")
    summary = train(Regression(plan), _loop(steps=4, every=2), _paths(tmp_path), identity="new")
    assert summary["resumed_from"] == 0
    stale = [p for p in (tmp_path / "checkpoints").iterdir() if p.name.startswith("stale-")]
    assert len(stale) == 1 and sorted(p.name for p in stale[0].iterdir()) == [
        "step_00000002",
        "step_00000004",
    ]
    meta = json.loads((tmp_path / "checkpoints/step_00000004/checkpoint.json").read_text())
    assert meta["identity"] == "new"


def test_metrics_log_drops_lines_after_the_resume_step(tmp_path):
    path = tmp_path / "m.jsonl"
    log = MetricsLog(path, enabled=True, resume_step=0)
    for step in range(1, 6):
        log.log(step, loss=float(step))
    log.close()
    with open(path, "a") as handle:
        handle.write('{"step": 6, "lo')  # a line cut by a kill
    log = MetricsLog(path, enabled=True, resume_step=3)
    log.log(4, loss=40.0)
    log.close()
    assert [(r["step"], r["loss"]) for r in read(path)] == [(1, 1.0), (2, 2.0), (3, 3.0), (4, 40.0)]


# --- scheduler signals: USR2 saves the step in progress, SIGTERM stops all writing -------------------
@dataclass
class Signalled(Regression):
    """Regression that sends itself ``signum`` while computing step ``at`` (0-based), or while exporting
    the checkpoint of step ``at`` when ``in_export``."""

    signum: int = signal.SIGUSR2
    at: int = 6
    in_export: bool = False

    def loss(self, model, x, step):
        if step == self.at and not self.in_export:
            os.kill(os.getpid(), self.signum)  # the handler runs before os.kill returns
        return super().loss(model, x, step)

    def export(self, model, out_dir: Path, *, final: bool):
        super().export(model, out_dir, final=final)
        if self.in_export and out_dir.parent.name == f".tmp-step_{self.at:08d}":
            os.kill(os.getpid(), self.signum)


@pytest.fixture
def scheduler_signals():
    """Our stop handlers in front of stand-ins for submitit's: its USR2 handler (which would call the
    job's checkpoint(), requeue and exit) and its SIGTERM handler (which ignores the signal); yields the
    calls the USR2 stand-in received."""
    calls: list[list[str]] = []
    folder: list[Path] = []

    def submitit_usr2(signum, frame):
        calls.append(sorted(p.name for p in folder[0].iterdir()))  # what was on disk when requeued

    def submitit_bypass(signum, frame):
        pass

    previous = {
        signal.SIGUSR2: signal.signal(signal.SIGUSR2, submitit_usr2),
        signal.SIGTERM: signal.signal(signal.SIGTERM, submitit_bypass),
    }
    stop.install()
    yield calls, folder
    stop.uninstall()
    for signum, handler in previous.items():
        signal.signal(signum, handler)


def test_usr2_saves_the_step_in_progress_then_requeues_and_resumes_at_the_next_step(
    tmp_path, scheduler_signals
):
    calls, folder = scheduler_signals
    folder.append(tmp_path / "cut" / "checkpoints")
    plan = BatchPlan(16, 4, 2, seed=0)
    loop = _loop(steps=12, every=100)  # no periodic checkpoint before the end: only USR2's
    with pytest.raises(stop.TrainingStopped, match="after step 7"):
        train(Signalled(plan, at=6), loop, _paths(tmp_path / "cut"), identity="a")
    # the step during which the signal came (index 6, the 7th) finished and was saved, then submitit's
    # handler ran once, with the checkpoint already on disk
    assert calls == [["step_00000007"]]
    assert [r["step"] for r in read(tmp_path / "cut/metrics.jsonl")] == list(range(1, 8))
    stop.uninstall()  # the requeued run is a fresh process
    summary = train(Regression(plan), loop, _paths(tmp_path / "cut"), identity="a")
    assert summary["resumed_from"] == 7
    train(Regression(plan), loop, _paths(tmp_path / "full"), identity="a")
    full, cut = (load_file(tmp_path / p / "final/model.safetensors") for p in ("full", "cut"))
    assert all(torch.equal(full[k], cut[k]) for k in full)


def test_sigterm_stops_training_without_writing_anything_more(tmp_path, scheduler_signals):
    plan = BatchPlan(16, 4, 2, seed=0)
    with pytest.raises(stop.TrainingStopped) as stopped:
        train(
            Signalled(plan, signum=signal.SIGTERM, at=6),
            _loop(steps=12, every=2),
            _paths(tmp_path),
            identity="a",
        )
    assert stopped.value.code == 128 + signal.SIGTERM
    # step 7 was computed but neither logged nor saved; the newest checkpoint stays step 6
    assert [r["step"] for r in read(tmp_path / "metrics.jsonl")] == list(range(1, 7))
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step_00000004", "step_00000006"]
    assert not (tmp_path / "final").exists()


def test_sigterm_during_a_checkpoint_leaves_no_new_checkpoint(tmp_path, scheduler_signals):
    plan = BatchPlan(16, 4, 2, seed=0)
    with pytest.raises(stop.TrainingStopped):
        train(
            Signalled(plan, signum=signal.SIGTERM, at=4, in_export=True),
            _loop(steps=12, every=2),
            _paths(tmp_path),
            identity="a",
        )
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step_00000002"]


def test_gradient_checkpointing_skips_a_model_with_no_layer_to_recompute(tmp_path):
    """UniToken's LM holds Chameleon's VQ-VAE, a transformers model that claims checkpointing support but has
    no layer to recompute; transformers raises for it. The paper-shape smoke run's align stage
    (gradient_checkpointing: true) stopped there; the LM's own layers must still be checkpointed."""
    from transformers import ChameleonForConditionalGeneration

    from workflow_scripts.tiny.unitoken import build_lm
    from workflow_scripts.train.loop import _enable_gradient_checkpointing
    from workflow_scripts.unitoken.config import TinyLMSpec, TinyVQSpec

    lm_spec = TinyLMSpec(
        text_vocab_size=300, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=2, max_positions=64
    )
    vq = TinyVQSpec(
        resolution=16,
        base_channels=32,
        channel_multiplier=[1, 1],
        num_res_blocks=1,
        codebook_size=16,
        embed_dim=4,
        latent_channels=4,
    )
    build_lm(lm_spec, vq, 0, ["a red square on the left", "a blue circle"] * 20, tmp_path)
    lm = ChameleonForConditionalGeneration.from_pretrained(tmp_path)
    _enable_gradient_checkpointing(torch.nn.ModuleDict({"lm": lm}))
    layers = lm.model.layers
    assert layers and all(layer.gradient_checkpointing for layer in layers)

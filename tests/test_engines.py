"""The training engines (``loop.distributed``: ddp, fsdp, deepspeed ZeRO-2/3) with 2 CPU processes.

For each engine, on a tiny Qwen2 causal LM (the real transformers classes, so FSDP2 shards its
``Qwen2DecoderLayer`` blocks and the export is a ``save_pretrained`` directory):

- the loss curve of 2 processes equals that of 1 process with the same global batch;
- a run stopped after a checkpoint and resumed ends with the weights of an uninterrupted run;
- the export loads with ``from_pretrained`` and equals the weights in the engine's own checkpoint.

Processes are started with ``torch.multiprocessing`` (gloo), as a launcher's tasks would be.
"""

from __future__ import annotations

import dataclasses
import json
import os
import resource
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from tests.cluster.requeue_jobs import loop_config
from workflow_scripts.train.batches import BatchPlan
from workflow_scripts.train.config import LoopConfig
from workflow_scripts.train.metrics import read

ENGINES = {
    "ddp": {"distributed": "ddp"},
    "fsdp": {"distributed": "fsdp"},
    "zero2": {"distributed": "deepspeed", "zero_stage": 2},
    "zero3": {"distributed": "deepspeed", "zero_stage": 3},
}


@dataclass
class TinyLM:
    """Next-token prediction on fixed random sequences with a 2-layer Qwen2."""

    plan: BatchPlan
    hidden: int = 32
    layers: int = 2
    name: str = "tiny-lm"

    def trainable(self):
        from transformers import Qwen2Config, Qwen2ForCausalLM

        torch.manual_seed(0)
        config = Qwen2Config(
            vocab_size=64,
            hidden_size=self.hidden,
            intermediate_size=2 * self.hidden,
            num_hidden_layers=self.layers,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=64,
            tie_word_embeddings=True,  # as Qwen2.5-3B: one tensor under two names
        )
        return Qwen2ForCausalLM(config)

    def micro_batches(self, step, rank, world):
        # counting sequences mod 64 from random starts: learnable within a few steps
        starts = torch.randint(0, 64, (self.plan.num_samples, 1), generator=torch.Generator().manual_seed(1))
        data = (starts + torch.arange(12)) % 64
        return [data[[s.index for s in chunk]] for chunk in self.plan.micro_batches(step, rank, world)]

    def loss(self, model, ids, step):
        ids = ids.to(next(model.parameters()).device)
        return model(input_ids=ids, labels=ids).loss, {}

    def export(self, model, out_dir: Path, *, final: bool):
        model.save_pretrained(out_dir)


def test_fsdp_shards_the_blocks_a_model_declares_unsplittable():
    from workflow_scripts.train.engines import shard_blocks

    model = TinyLM(BatchPlan(32, 8, 2, seed=0)).trainable()
    assert set(model._no_split_modules) == {"Qwen2DecoderLayer"}
    assert shard_blocks(model) == ["model.layers.0", "model.layers.1"]
    assert shard_blocks(torch.nn.Sequential(torch.nn.Linear(2, 2))) == []  # root only


def test_the_engine_and_zero_stage_are_config_keys():
    from workflow_scripts.config.loader import parse, resolve
    from workflow_scripts.config.typed import ConfigError

    loop = {"distributed": "deepspeed", "zero_stage": 3}
    cfg = parse(resolve({"preset": "tiny", "pretrain": {"encoder": {"loop": loop}}}))
    assert (cfg.pretrain.encoder.loop.distributed, cfg.pretrain.encoder.loop.zero_stage) == ("deepspeed", 3)
    assert parse(resolve({"preset": "tiny"})).pretrain.encoder.loop.zero_stage == 2  # default
    with pytest.raises(ConfigError, match="zero_stage"):
        resolve({"preset": "tiny", "pretrain": {"encoder": {"loop": {"zero_stage": 1}}}})
    fp16 = {"distributed": "fsdp", "mixed_precision": "fp16"}
    with pytest.raises(ConfigError, match=r"pretrain\.encoder\.loop.*gradient scaler.*bf16"):
        resolve({"preset": "tiny", "pretrain": {"encoder": {"loop": fp16}}})


def engine_loop(engine: str, steps: int, every: int) -> LoopConfig:
    base = loop_config(steps, every, keep_last=10)
    return dataclasses.replace(
        base,
        batch_size=8,
        optim=dataclasses.replace(base.optim, lr=1e-2),
        **ENGINES[engine],
    )


def _worker(
    rank: int, world: int, port: int, engine: str, root: str, runs: list[tuple[str, int]], size: dict
) -> None:
    from workflow_scripts.train.loop import StagePaths, train

    os.environ.update(
        RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world)
    )
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    for name, steps in runs:
        folder = Path(root) / name
        began = time.perf_counter()
        train(
            TinyLM(BatchPlan(32, 8, 2, seed=0), **size),
            engine_loop(engine, steps, every=2),
            StagePaths(folder / "checkpoints", folder / "metrics.jsonl", folder / "final"),
            identity="engine-test",
        )
        figures = {
            "seconds": time.perf_counter() - began,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        }
        (folder / f"figures-{rank}.json").write_text(json.dumps(figures))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_processes(world: int, engine: str, root: Path, runs: list[tuple[str, int]], **size) -> None:
    """``runs`` (folder, steps) one after the other in ``world`` fresh processes; ``size``: TinyLM's."""
    mp.spawn(_worker, args=(world, _free_port(), engine, str(root), runs, size), nprocs=world, join=True)


def checkpoint_weights(engine: str, step_dir: Path) -> dict[str, torch.Tensor]:
    """The trained fp32 weights as the engine's own checkpoint holds them (not through our export)."""
    if engine == "ddp":
        from safetensors.torch import load_file

        return load_file(step_dir / "model.safetensors")
    if engine == "fsdp":
        from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

        dcp_to_torch_save(step_dir / "dcp", step_dir.parent / "full.pt")
        return torch.load(step_dir.parent / "full.pt", weights_only=False)["model"]
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    return get_fp32_state_dict_from_zero_checkpoint(str(step_dir / "deepspeed"), tag="state")


@pytest.mark.slow
@pytest.mark.parametrize("engine", list(ENGINES))
def test_engine_two_processes_match_one_resume_and_export(engine, tmp_path):
    from transformers import Qwen2ForCausalLM

    # 2 processes: an uninterrupted run, and one stopped after its step-2 checkpoint then resumed
    run_processes(2, engine, tmp_path, [("two", 4), ("cut", 2), ("cut", 4)])
    run_processes(1, engine, tmp_path, [("one", 4)])

    one, two = ([r["loss"] for r in read(tmp_path / f"{n}/metrics.jsonl")] for n in ("one", "two"))
    assert len(one) == 4 and one[-1] < one[0]
    torch.testing.assert_close(torch.tensor(two), torch.tensor(one), rtol=1e-4, atol=0)

    full = Qwen2ForCausalLM.from_pretrained(tmp_path / "two/final").state_dict()
    resumed = Qwen2ForCausalLM.from_pretrained(tmp_path / "cut/final").state_dict()
    assert json.loads((tmp_path / "cut/checkpoints/step_00000004/checkpoint.json").read_text())["step"] == 4
    for key in full:
        torch.testing.assert_close(resumed[key], full[key], rtol=0, atol=0, msg=key)

    # the export is the trained weights: those of the engine's own checkpoint, and not the initial ones
    saved = checkpoint_weights(engine, tmp_path / "two/checkpoints/step_00000004")
    initial = TinyLM(BatchPlan(32, 8, 2, seed=0)).trainable().state_dict()
    for key, value in saved.items():
        torch.testing.assert_close(full[key], value, rtol=0, atol=0, msg=key)
    # (accelerate's safetensors file stores the tied lm_head once, under the embedding's name)
    assert set(saved) | {"lm_head.weight"} >= {k for k in full if not k.endswith("rotary_emb.inv_freq")}
    assert torch.equal(full["lm_head.weight"], full["model.embed_tokens.weight"])
    assert not torch.equal(
        full["model.layers.0.mlp.up_proj.weight"], initial["model.layers.0.mlp.up_proj.weight"]
    )
    exported = Qwen2ForCausalLM.from_pretrained(tmp_path / "two/checkpoints/step_00000004/model").state_dict()
    assert all(torch.equal(exported[k], full[k]) for k in full)


@pytest.fixture(scope="module")
def decoder_inputs(tmp_path_factory) -> Path:
    """The ci run's data shards, tiny decoder and trained encoder (the decoder phase's inputs) only."""
    from tests.conftest import ci_config, snakemake, write_config

    workdir = tmp_path_factory.mktemp("engines_dag")
    write_config(workdir, ci_config())
    run = Path("results/ci")
    targets = [run / "data/shards", run / "models/tiny/decoder", run / "train/pretrain_encoder/final"]
    snakemake(workdir, *map(str, targets))
    return workdir


@pytest.mark.slow
def test_decoder_phase_under_fsdp_with_two_launcher_tasks(decoder_inputs, tmp_path):
    """pretrain_decoder/lowres (SD3 transformer + projector) through our launcher, 2 local tasks: FSDP2
    follows the DDP loss curve and its export loads as a decoder equal to the checkpointed weights."""
    from tests.conftest import ci_config, decoder_weights, stage_command
    from workflow_scripts.config.loader import deep_merge
    from workflow_scripts.models.decoder import load_decoder

    source = decoder_inputs / "results/ci"
    inputs = {
        "decoder": source / "models/tiny/decoder",
        "encoder": source / "train/pretrain_encoder/final",
        "shards": source / "data/shards",
    }
    (lowres,) = [p for p in ci_config()["pretrain"]["decoder"]["phases"] if p["name"] == "lowres"]
    curves = {}
    for engine in ("ddp", "fsdp"):
        folder = tmp_path / engine
        loop = {"steps": 4, "micro_batch_size": 4, "distributed": engine, "checkpoint": {"every_steps": 2}}
        command = stage_command(
            "pretrain_decoder",
            folder,
            inputs,
            wildcards={"phase": "lowres"},
            pretrain={  # the tiny preset's EMA keeps whole weights: ddp only
                "decoder": {"previews": 1, "ema_decay": 0.0, "phases": [deep_merge(lowres, {"loop": loop})]}
            },
            launcher={"kind": "local", "defaults": {"tasks_per_node": 2, "cpus_per_task": 1}},
        )
        result = subprocess.run(command, capture_output=True, text=True, cwd=decoder_inputs)
        assert result.returncode == 0, result.stderr[-3000:]
        assert json.loads((folder / "final/provenance.json").read_text())["world_size"] == 2
        curves[engine] = [r["loss"] for r in read(folder / "final/metrics.jsonl")]
    assert len(curves["fsdp"]) == 4
    torch.testing.assert_close(
        torch.tensor(curves["fsdp"]), torch.tensor(curves["ddp"]), rtol=1e-4, atol=1e-5
    )
    final = tmp_path / "fsdp/final"
    load_decoder(final)  # loads with from_pretrained, as the next stage does
    exported = decoder_weights(final)
    at_end = decoder_weights(tmp_path / "fsdp/checkpoints/step_00000004/model")
    assert exported.keys() == at_end.keys()
    assert all(torch.equal(exported[k], at_end[k]) for k in exported)
    assert (tmp_path / "fsdp/checkpoints/step_00000004/dcp/.metadata").exists()


def _unlaunched_worker(rank: int, engine: str, root: str) -> None:
    """One process with no launcher environment (no RANK, WORLD_SIZE, LOCAL_RANK), no clipping."""
    from workflow_scripts.train.loop import StagePaths, train

    assert "RANK" not in os.environ and "LOCAL_RANK" not in os.environ
    base = engine_loop(engine, steps=2, every=2)
    loop = dataclasses.replace(base, optim=dataclasses.replace(base.optim, grad_clip=0.0))
    folder = Path(root) / engine
    train(
        TinyLM(BatchPlan(32, 8, 2, seed=0)),
        loop,
        StagePaths(folder / "checkpoints", folder / "metrics.jsonl", folder / "final"),
        identity="engine-test",
    )


@pytest.mark.slow
def test_engines_run_one_process_without_a_launcher_and_report_the_unclipped_norm(tmp_path):
    """A 1-GPU job gets no torch.distributed environment from submitit: every engine must still start
    (DeepSpeed insists on LOCAL_RANK), and with clipping off still report the gradient norm."""
    rows = {}
    for engine in ENGINES:
        mp.spawn(_unlaunched_worker, args=(engine, str(tmp_path)), nprocs=1, join=True)
        rows[engine] = torch.tensor(
            [[r["loss"], r["grad_norm"]] for r in read(tmp_path / engine / "metrics.jsonl")]
        )
    for engine, row in rows.items():
        torch.testing.assert_close(row, rows["ddp"], rtol=1e-4, atol=0, msg=engine)


def _half_frozen(seed: int) -> torch.nn.Module:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 4))
    model[0].requires_grad_(False)  # a LoRA stage's base model: an input of the stage
    torch.manual_seed(seed)
    torch.nn.init.normal_(model[1].weight)
    return model


def test_ddp_checkpoints_hold_only_the_trained_parameters_and_resume_them(tmp_path):
    from safetensors import safe_open
    from safetensors.torch import save_file

    from workflow_scripts.train.engines import make_engine
    from workflow_scripts.train.optim import build_schedule

    def prepared(seed):
        loop = loop_config(4, 2)
        model = _half_frozen(seed)
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.1)
        engine = make_engine(loop)
        model, optimizer = engine.prepare(model, optimizer, build_schedule(optimizer, loop.optim, loop.steps))
        return engine, model, optimizer

    engine, model, optimizer = prepared(seed=1)
    model(torch.ones(2, 4)).sum().backward()
    optimizer.step()
    engine.save_state(str(tmp_path / "ckpt"))
    with safe_open(str(tmp_path / "ckpt/model.safetensors"), "pt") as file:
        assert sorted(file.keys()) == ["1.bias", "1.weight"]

    engine2, resumed, _ = prepared(seed=2)
    frozen = resumed[0].weight.clone()
    engine2.load_state(str(tmp_path / "ckpt"))
    assert torch.equal(resumed[1].weight, model[1].weight) and torch.equal(resumed[0].weight, frozen)

    save_file({"1.bias": model[1].bias.detach()}, tmp_path / "ckpt/model.safetensors")  # a trained one lost
    with pytest.raises(
        RuntimeError, match=r"model\.safetensors lacks 1 trained parameter\(s\) \(e\.g\. 1\.weight\)"
    ):
        engine2.load_state(str(tmp_path / "ckpt"))


def test_deepspeed_builds_its_ops_in_one_cache_per_python_environment(monkeypatch, tmp_path):
    from workflow_scripts.train.engines import extensions_dir

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    mine, other = extensions_dir("/work/a/.venv"), extensions_dir("/work/b/.venv")
    assert mine == extensions_dir("/work/a/.venv")  # the same environment finds its build again
    assert mine != other  # another checkout's environment does not overwrite it
    assert Path(mine).parent == tmp_path / "torch_extensions"

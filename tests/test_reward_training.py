"""The tiny reward backbones' training stage (reward_train): its objective by hand, that training gives the
reward room on held-out scenes, its export in the library layout, and its place in the DAG."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from PIL import Image

from workflow_scripts.config.loader import parse, resolve
from workflow_scripts.data import scenes
from workflow_scripts.harness.paths import StagePaths
from workflow_scripts.reward.backbones import load_backbone
from workflow_scripts.reward.pixels import to_unit
from workflow_scripts.reward.training import (
    WEIGHTS,
    BackboneTraining,
    ContrastiveObjective,
    blur,
    info_nce,
    separation,
)
from workflow_scripts.train.batches import BatchPlan
from workflow_scripts.train.loop import train


@dataclass(frozen=True)
class _Record:
    image: Image.Image
    caption: str


def _scenes(count: int, seed: int) -> list[_Record]:
    rng = np.random.default_rng(seed)
    world = {"textures": ("solid",), "sizes": ("medium", "large"), "max_objects": 2}  # the tiny preset's
    drawn = [scenes.sample_scene(rng, **world) for _ in range(count)]
    return [
        _Record(scenes.render(s, 128).resize((32, 32), Image.BILINEAR), scenes.describe(s)) for s in drawn
    ]


def test_info_nce_by_hand():
    """Two orthonormal pairs at scale 1: each row's positive logit 1, its negative 0, so each direction's
    cross-entropy is log(1 + e^-1) = 0.31326."""
    first = torch.eye(2)
    assert float(info_nce(first, first, 1.0)) == pytest.approx(math.log(1 + math.exp(-1)), rel=1e-6)
    # a swapped second view puts each positive on the wrong row: log(1 + e^1) = 1.31326
    assert float(info_nce(first, first.flip(0), 1.0)) == pytest.approx(math.log(1 + math.e), rel=1e-6)


def test_blur_keeps_a_flat_image_and_spreads_a_point():
    flat = torch.full((1, 3, 9, 9), 0.25)
    assert torch.allclose(blur(flat, [1.0]), flat, atol=1e-6)
    point = torch.zeros(2, 3, 9, 9)
    point[:, :, 4, 4] = 1.0
    out = blur(point, [0.0, 1.0])
    assert torch.equal(out[0], point[0])  # sigma 0: unchanged
    assert 0 < float(out[1, 0, 4, 4]) < 0.25 and float(out[1, 0, 4, 5]) > 0
    assert float(out[1].sum()) == pytest.approx(3.0, rel=1e-4)  # a Gaussian moves mass, adds none


def _loop(steps: int):
    loop = {"steps": steps, "batch_size": 16, "micro_batch_size": 16, "log_every": 10}
    loop["checkpoint"] = {"every_steps": steps, "keep_last": 1}
    return parse(resolve({"reward_train": {"loop": loop}})).reward_train.loop


@pytest.mark.parametrize("name", ["clip", "dinov2"])
def test_training_gives_the_reward_room_on_held_out_scenes(name, tmp_path):
    """40 steps on 48 scenes: the random backbone finds any two held-out scenes alike (the reward could
    barely tell a wrong redrawing from a right one); trained, a wrong scene scores far below a blurred
    copy, and the export loads as a user's downloaded backbone does, with the trained weights."""
    from workflow_scripts.tiny.backbones import build_tiny

    cfg = parse(resolve({}))
    base = tmp_path / "base"
    build_tiny(name, getattr(cfg.models.reward, name).tiny, 0, base)
    held_out = to_unit([r.image for r in _scenes(8, seed=1)])
    before = separation(load_backbone(name, base), held_out)

    images = _scenes(48, seed=0)
    objective = ContrastiveObjective(load_backbone(name, base), cfg.reward_train.temperature)
    plan = BatchPlan(len(images), 16, 16, seed=3)
    task = BackboneTraining.on(base, objective, images, plan, cfg.reward_train.view_blur)
    paths = StagePaths(tmp_path / "checkpoints", tmp_path / "metrics.jsonl", tmp_path / "final")
    train(task, _loop(40), paths, identity="test")

    trained = load_backbone(name, paths.final)
    after = separation(trained, held_out)
    assert before["similarity_other"] > 85, before  # no room: the problem this stage solves
    assert after["similarity_other"] < before["similarity_other"] - 30, (before, after)
    assert after["similarity_same"] > after["similarity_other"] + 30, after
    exported = trained.model.state_dict()
    for key, value in objective.model.state_dict().items():
        assert torch.equal(exported[key], value), key
    assert (paths.final / WEIGHTS[objective.library]).exists()


def test_reward_training_is_tiny_only_and_checks_its_values():
    from tests.test_config import PAPER_PATHS

    assert parse(resolve({})).trains_rewards
    paper = {"preset": "paper", "reward_train": {"enabled": True}, **PAPER_PATHS}
    assert not parse(resolve(paper)).trains_rewards  # published backbones are used as they are
    with pytest.raises(ValueError, match=r"reward_train resolution 48 is not one of data.resolutions"):
        parse(resolve({"reward_train": {"resolution": 48}}))
    with pytest.raises(ValueError, match=r"reward_train.view_blur must be \[low, high\]"):
        parse(resolve({"reward_train": {"view_blur": [1.0, 0.5]}}))


def test_every_backbone_reader_takes_the_trained_backbone(tmp_path):
    """Rewards, the cold start, checkpoint selection and the benchmarks name a backbone through
    Run.base_model: at the tiny preset that is the trained export, and each used backbone is a training
    stage of the run (ingested, on the report); disabled, the random build."""
    from workflow_scripts.dag import Run

    run = Run.load({"results_root": str(tmp_path)}, write=False)
    assert run.backbones == ["clip", "longclip", "dinov2", "dinov3"]
    for name in run.backbones:
        assert run.base_model(name) == str(run.layout.final(f"reward_{name}"))
        assert f"reward_{name}" in run.train_stages
    assert run.rl.reward_inputs()["reward_clip"] == str(run.layout.final("reward_clip"))
    plain = Run.load({"results_root": str(tmp_path), "reward_train": {"enabled": False}}, write=False)
    assert plain.base_model("clip") == str(plain.layout.tiny_model("clip"))
    assert not any(s.startswith("reward_") for s in plain.train_stages)


@pytest.mark.slow
def test_the_dag_trains_each_backbone_and_the_report_shows_its_room(tiny_dag):
    from tests.conftest import report_row, stored_val_metrics

    run = tiny_dag / "results" / "ci"
    final = run / "train" / "reward_clip" / "final"
    figures = json.loads((final / "validation.json").read_text())
    assert figures["val_images"] == 4
    assert {"similarity_same", "similarity_other", "untrained_similarity_other"} <= set(figures)
    provenance = json.loads((run / "train" / "rl_encoder" / "final" / "provenance.json").read_text())
    assert provenance["inputs"]["reward_clip"]["path"] == "results/ci/train/reward_clip/final"
    stored = stored_val_metrics(tiny_dag, "ci", "reward_clip")
    assert stored["val_similarity_other"] == pytest.approx(figures["similarity_other"])
    _, row = report_row(run / "report" / "report.html", "reward-backbones", "reward_clip")
    assert f"<td>{figures['similarity_same']:.1f}</td><td>{figures['similarity_other']:.1f}</td>" in row


def test_the_reward_backbones_do_not_follow_the_runs_seed():
    """They stand in for published weights: a run with another seed builds and trains them as before
    (their own reward_train.seed), so its rewards are read by the same judge; the recipe's models follow
    the run's seed."""
    from workflow_scripts.catalog import stage_hash
    from workflow_scripts.models.config import BACKBONES

    base, reseeded, own = resolve({}), resolve({"seed": 1}), resolve({"reward_train": {"seed": 1}})
    for name in BACKBONES:
        for stage, wildcards in (
            ("build_tiny_model", {"component": name}),
            ("reward_train", {"backbone": name}),
        ):
            assert stage_hash(base, stage, **wildcards) == stage_hash(reseeded, stage, **wildcards)
            assert stage_hash(base, stage, **wildcards) != stage_hash(own, stage, **wildcards)
    encoder = {"component": "encoder"}
    assert stage_hash(base, "build_tiny_model", **encoder) != stage_hash(
        reseeded, "build_tiny_model", **encoder
    )


@pytest.mark.parametrize("name", ["dinov2", "dinov3"])
def test_a_tiny_timm_backbone_reads_images_at_its_own_side(name, tmp_path):
    """Its saved config states its own input side, as a published checkpoint's does: DINOv3's RoPE ViT
    has no fixed input size, and timm's default config for it said 256 px (16x the tokens at 32 px)."""
    from torchvision.transforms import Resize

    from workflow_scripts.tiny.backbones import build_tiny

    spec = getattr(parse(resolve({})).models.reward, name).tiny
    build_tiny(name, spec, 0, tmp_path / name)
    (resize,) = [
        t for t in load_backbone(name, tmp_path / name).preprocess.transforms if isinstance(t, Resize)
    ]
    assert resize.size in (spec.image_size, [spec.image_size])

"""Unified-GRPO stages: rewards, backbones, the variants DAG, learning on learnable rewards, resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from tests.conftest import stage_command
from workflow_scripts.config.loader import parse, resolve
from workflow_scripts.config.typed import ConfigError
from workflow_scripts.reward.backbones import load_backbone
from workflow_scripts.reward.functions import RewardInputs, RewardModel, caption_length, mean_color
from workflow_scripts.reward.pixels import to_unit
from workflow_scripts.tiny.backbones import build_tiny
from workflow_scripts.train.metrics import read


def _pictures(n: int, size: int = 48, smooth: bool = False) -> list[Image.Image]:
    rng = np.random.default_rng(0)
    blocks = [rng.integers(0, 255, (6, 6, 3), dtype=np.uint8) for _ in range(n)]
    method = Image.Resampling.BILINEAR if smooth else Image.Resampling.NEAREST
    return [Image.fromarray(b).resize((size, size), method) for b in blocks]


@pytest.fixture(scope="module")
def tiny_backbones(tmp_path_factory):
    cfg = parse(resolve({}))
    root = tmp_path_factory.mktemp("backbones")
    for i, name in enumerate(("clip", "longclip", "dinov2", "dinov3")):
        build_tiny(name, getattr(cfg.models.reward, name).tiny, i, root / name)
    return root


def test_learnable_rewards_hand_values():
    torch.testing.assert_close(caption_length(["one two three", "a " * 10], 5), torch.tensor([-0.4, -1.0]))
    red = torch.zeros(1, 3, 4, 4)
    red[:, 0] = 1.0
    torch.testing.assert_close(mean_color(red, [1.0, 0.0, 0.0]), torch.tensor([0.0]))
    torch.testing.assert_close(mean_color(red, [0.0, 0.0, 0.0]), torch.tensor([-1.0]))


def test_reward_model_weights_and_identical_images_score_one(tiny_backbones):
    cfg = parse(
        resolve({"rl": {"rewards": {"caption_length": {"weight": 0.5, "target_words": 2}}}})
    ).rl.rewards
    backbones = {n: load_backbone(n, tiny_backbones / n) for n in ("clip", "longclip", "dinov2")}
    images = to_unit(_pictures(3))
    total, terms = RewardModel(cfg, backbones)(RewardInputs(images, images, ["a b", "a b c d", "a"]))
    torch.testing.assert_close(terms["reconstruction"], torch.ones(3), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(total, 1.0 + 0.5 * torch.tensor([0.0, -1.0, -0.5]), rtol=1e-5, atol=1e-5)
    assert {"sim_clip", "sim_longclip", "sim_dinov2"} <= set(terms)


@pytest.mark.parametrize("name", ["clip", "longclip", "dinov2", "dinov3"])
def test_backbone_tensor_preprocessing_matches_the_library_pil_transform(tiny_backbones, name):
    import open_clip
    import timm

    folder = tiny_backbones / name
    if name in ("clip", "longclip"):
        _, _, transform = open_clip.create_model_and_transforms(f"local-dir:{folder}")
    else:
        model = timm.create_model(f"local-dir:{folder}", pretrained=True, num_classes=0)
        transform = timm.data.create_transform(**timm.data.resolve_data_config({}, model=model))
    backbone = load_backbone(name, folder)
    pictures = _pictures(2, size=57, smooth=True)  # odd size: exercises resize and centre crop
    expected = torch.stack([transform(p) for p in pictures])
    ours = backbone.preprocess(to_unit(pictures))
    assert ours.shape == expected.shape
    # PIL and torch implement bicubic antialiasing slightly differently; normalised units
    assert (ours - expected).abs().mean() < 0.01 and (ours - expected).abs().max() < 0.1


@pytest.mark.parametrize("name", ["clip", "longclip", "dinov2", "dinov3"])
def test_tiny_backbones_respond_to_the_image(tiny_backbones, name):
    backbone = load_backbone(name, tiny_backbones / name)
    with torch.no_grad():
        features = backbone.embed(to_unit(_pictures(4)))
    cosine = features @ features.T
    off_diagonal = cosine[~torch.eye(4, dtype=bool)]
    assert off_diagonal.max() < 0.99, f"{name} features ignore the image: {cosine}"


def test_missing_backbone_directory_names_the_key(tmp_path):
    with pytest.raises(ConfigError, match=r"models\.reward\.dinov2\.path"):
        load_backbone("dinov2", tmp_path)


def test_inner_iterations_must_divide_steps_and_checkpoints():
    with pytest.raises(ConfigError, match=r"multiples of grpo\.inner_iterations \(4\)"):
        resolve({"rl": {"encoder": {"grpo": {"inner_iterations": 4}}}})


# --- end to end on the tiny DAG -------------------------------------------------------------------


def _source(tiny_dag: Path) -> Path:
    return tiny_dag / "results" / "ci"


@pytest.mark.slow
def test_dag_builds_every_ablation_variant(tiny_dag):
    run = _source(tiny_dag)
    train = "results/ci/train"  # paths are relative to the Snakemake working directory
    pretrained = f"{train}/pretrain_encoder/final"
    selected = {
        s: json.loads((run / f"selection/{s}.json").read_text())["selected"]
        for s in ("rl_coldstart", "rl_encoder", "rl_decoder_2b", "rl_decoder_2a+2b")
    }
    expected = {
        "none": (pretrained, f"{train}/pretrain_decoder_highres/final"),
        "2a": (selected["rl_encoder"], selected["rl_coldstart"]),
        "2b": (pretrained, selected["rl_decoder_2b"]),
        "2a+2b": (selected["rl_encoder"], selected["rl_decoder_2a+2b"]),
    }
    for variant, (captioner, decoder) in expected.items():
        record = json.loads((run / f"variants/{variant}.json").read_text())
        assert (record["captioner"], record["decoder"]) == (captioner, decoder)
        assert (
            record["text_encoder"] == pretrained
        )  # the decoder always reads captions with the pretrained LLM
    assert selected["rl_encoder"].startswith(f"{train}/rl_encoder/checkpoints/step_")
    # 2a+2b trained on the selected 2a encoder's captions, from the selected cold-start decoder
    provenance = json.loads((run / "train/rl_decoder_2a+2b/final/provenance.json").read_text())
    assert provenance["inputs"]["captioner"]["path"] == selected["rl_encoder"]
    assert provenance["inputs"]["decoder"]["path"] == selected["rl_coldstart"]
    encoder_metrics = read(run / "train/rl_encoder/final/metrics.jsonl")
    keys = {
        "reward_mean",
        "reward_std",
        "reward_sim_clip",
        "kl",
        "clip_fraction",
        "advantage_std",
        "caption_words",
        "caption_tokens",
        "lr",
        "grad_norm",
    }
    assert keys <= set(encoder_metrics[0])
    assert (
        encoder_metrics[0]["ratio_mean"] == 1.0 and encoder_metrics[0]["kl"] == 0.0
    )  # first step: policy = ref
    decoder_metrics = read(run / "train/rl_decoder_2b/final/metrics.jsonl")
    assert decoder_metrics[0]["kl"] == 0.0 and {"reward_mean", "clip_fraction"} <= set(decoder_metrics[0])
    samples = json.loads((run / "train/rl_encoder/final/samples/step_000000/index.json").read_text())
    assert (
        samples["samples"][0]["caption"]
        and (run / "train/rl_encoder/final/samples/step_000000/00_output.png").exists()
    )
    assert (run / "train/rl_encoder/final/adapter/adapter_config.json").exists()
    cold = read(run / "train/rl_coldstart/final/metrics.jsonl")
    assert {"sim_clip", "sim_longclip", "sim_dinov2"} <= set(cold[0])


def _encoder_inputs(tiny_dag: Path) -> dict[str, Path]:
    run = _source(tiny_dag)
    return {
        "encoder": run / "train/pretrain_encoder/final",
        "decoder": run / "train/rl_coldstart/final",
        "rl_data": run / "data/rl",
        **{f"reward_{n}": run / f"models/tiny/{n}" for n in ("clip", "longclip", "dinov2")},
    }


def _decoder_inputs(tiny_dag: Path) -> dict[str, Path]:
    run = _source(tiny_dag)
    encoder = run / "train/pretrain_encoder/final"
    return {
        "captioner": encoder,
        "text_encoder": encoder,
        "decoder": run / "train/rl_coldstart/final",
        "rl_data": run / "data/rl",
        **{f"reward_{n}": run / f"models/tiny/{n}" for n in ("clip", "longclip", "dinov2")},
    }


def _loop(steps: int, lr: float, every: int | None = None) -> dict:
    return {
        "steps": steps,
        "batch_size": 2,
        "micro_batch_size": 1,
        "optim": {"lr": lr},
        "checkpoint": {"every_steps": every or steps},
    }


@pytest.mark.slow
def test_encoder_grpo_raises_a_learnable_reward(tiny_dag, tmp_path):
    """Reward = closeness of caption length to 8 words: 30 GRPO steps must shorten the captions."""
    rl = {
        "rewards": {"reconstruction": {"weight": 0.0}, "caption_length": {"weight": 1.0, "target_words": 8}},
        "encoder": {
            "max_new_tokens": 48,
            "grpo": {"group_size": 4, "sample_every": 1000},
            "loop": _loop(30, 1e-3),
        },
    }
    command = stage_command(
        "rl_encoder", tmp_path, _encoder_inputs(tiny_dag), launcher={"kind": "inline"}, rl=rl
    )
    subprocess.run(command, check=True, capture_output=True)
    rows = read(tmp_path / "final/metrics.jsonl")
    first, last = (
        np.mean([r["reward_mean"] for r in rows[:5]]),
        np.mean([r["reward_mean"] for r in rows[-5:]]),
    )
    assert last > first + 0.5, [round(r["reward_mean"], 2) for r in rows]
    assert np.mean([r["caption_words"] for r in rows[-5:]]) < np.mean([r["caption_words"] for r in rows[:5]])


@pytest.mark.slow
def test_decoder_flow_grpo_raises_a_learnable_reward(tiny_dag, tmp_path):
    """Reward = closeness of the image's mean colour to red: 40 Flow-GRPO steps must move it."""
    rl = {
        "rewards": {
            "reconstruction": {"weight": 0.0},
            "mean_color": {"weight": 1.0, "target": [1.0, 0.0, 0.0]},
        },
        "decoder": {
            "grpo": {"group_size": 4, "sample_every": 1000, "clip_epsilon": 0.2, "beta": 0.0},
            "loop": _loop(40, 5e-3),
        },
    }
    command = stage_command(
        "rl_decoder",
        tmp_path,
        _decoder_inputs(tiny_dag),
        wildcards={"variant": "2b"},
        launcher={"kind": "inline"},
        rl=rl,
    )
    subprocess.run(command, check=True, capture_output=True)
    rows = read(tmp_path / "final/metrics.jsonl")
    first, last = (
        np.mean([r["reward_mean"] for r in rows[:5]]),
        np.mean([r["reward_mean"] for r in rows[-10:]]),
    )
    spread = np.mean([r["reward_std"] for r in rows[:5]])
    assert last > first + max(0.03, 3 * spread), [round(r["reward_mean"], 3) for r in rows]


@pytest.mark.slow
def test_second_inner_iteration_moves_the_ratio(tiny_dag, tmp_path):
    rl = {"encoder": {"grpo": {"inner_iterations": 2, "sample_every": 1000}, "loop": _loop(4, 1e-2, every=2)}}
    command = stage_command(
        "rl_encoder", tmp_path, _encoder_inputs(tiny_dag), launcher={"kind": "inline"}, rl=rl
    )
    subprocess.run(command, check=True, capture_output=True)
    rows = read(tmp_path / "final/metrics.jsonl")
    assert rows[0]["ratio_mean"] == 1.0 and rows[2]["ratio_mean"] == 1.0  # a new rollout: rho = 1
    assert rows[1]["ratio_mean"] != 1.0 and rows[3]["ratio_mean"] != 1.0  # same rollout, updated policy
    assert rows[0]["reward_mean"] == rows[1]["reward_mean"]  # the cached rollout is reused


@pytest.mark.slow
def test_killed_rl_stage_resumes_to_the_same_adapter(tiny_dag, tmp_path):
    rl = {"encoder": {"grpo": {"sample_every": 1000}, "loop": _loop(16, 1e-3, every=2)}}
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    inline = {"kind": "inline"}
    subprocess.run(
        stage_command("rl_encoder", whole, _encoder_inputs(tiny_dag), launcher=inline, rl=rl),
        check=True,
        capture_output=True,
    )
    command = stage_command("rl_encoder", cut, _encoder_inputs(tiny_dag), launcher=inline, rl=rl)
    process = subprocess.Popen(
        command, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    metrics = cut / "metrics.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and not (metrics.exists() and any(r["step"] >= 5 for r in read(metrics))):
        time.sleep(0.02)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert not (cut / "final").exists() and any((cut / "checkpoints").glob("step_*"))
    subprocess.run(command, check=True, capture_output=True)
    a = load_file(whole / "final/adapter/adapter_model.safetensors")
    b = load_file(cut / "final/adapter/adapter_model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert [r["reward_mean"] for r in read(whole / "final/metrics.jsonl")] == [
        r["reward_mean"] for r in read(cut / "final/metrics.jsonl")
    ]


@pytest.mark.slow
def test_cold_start_trains_projector_and_dit_adapter_only(tiny_dag):
    from workflow_scripts.models.decoder import load_decoder

    run = _source(tiny_dag)
    before = load_decoder(run / "train/pretrain_decoder_highres/final")
    after = load_decoder(run / "train/rl_coldstart/final")
    assert not torch.equal(before.projector.net[0].weight, after.projector.net[0].weight)
    changed = [
        k
        for k, v in before.transformer.state_dict().items()
        if not torch.equal(v, after.transformer.state_dict()[k])
    ]
    assert changed and all(any(t in k for t in ("to_q", "to_k", "to_v", "to_out", "add_")) for k in changed)
    assert all(torch.equal(v, after.vae.state_dict()[k]) for k, v in before.vae.state_dict().items())

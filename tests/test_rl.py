"""Unified-GRPO stages: rewards, backbones, the variants DAG, learning on learnable rewards, resume."""

from __future__ import annotations

import dataclasses
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
    cold = selected["rl_coldstart"]  # hidden_states mode: the cold start's directory holds both models
    expected = {  # (captioner, reader, decoder): each variant reads with its captioner (rl.reader)
        "none": (pretrained, pretrained, f"{train}/pretrain_decoder_highres/final"),
        "coldstart": (cold, cold, cold),
        "2a": (selected["rl_encoder"], selected["rl_encoder"], cold),
        "2b": (cold, cold, selected["rl_decoder_2b"]),
        "2a+2b": (selected["rl_encoder"], selected["rl_encoder"], selected["rl_decoder_2a+2b"]),
    }
    for variant, parts in expected.items():
        record = json.loads((run / f"variants/{variant}.json").read_text())
        assert (record["captioner"], record["text_encoder"], record["decoder"]) == parts, variant
        coldstart = "none" if variant == "none" else "hidden_states"
        assert record["protocol"] == {
            "reader": "captioner",
            "coldstart": coldstart,
            "conditioning": "fixed_length",
        }
    # 2a started from the cold start's encoder
    provenance = json.loads((run / "train/rl_encoder/final/provenance.json").read_text())
    assert provenance["inputs"]["encoder"]["path"] == cold
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
    assert {k for k in cold[0] if k.startswith("sim_")} == {
        "sim_clip"
    }  # rl.coldstart.alphas: the release's CLIP


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
    """Reward = closeness of caption length to 8 words: 30 GRPO steps must shorten the captions. Rollouts
    sample the full softmax(logits / T) (no top-k): here +0.35 in 30 steps (the bar was 0.5 while
    transformers' default top-k 50 truncated the tiny vocabulary; seeded, so the figure repeats)."""
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
    assert last > first + 0.2, [round(r["reward_mean"], 2) for r in rows]
    assert np.mean([r["caption_words"] for r in rows[-5:]]) < np.mean([r["caption_words"] for r in rows[:5]])


@pytest.mark.slow
def test_decoder_flow_grpo_raises_a_learnable_reward(tiny_dag, tmp_path):
    """Reward = closeness of the image's mean colour to red: 40 Flow-GRPO steps must move it. Since the
    tiny VAE is trained (vae_train), a decoded image's mean colour moves far less per step than a random
    VAE's did (+0.015 in 40 steps at lr 2e-2, five times the first steps' within-group spread; it was
    > 0.03 at 5e-3 with the random VAE): the bar is 3 x that spread, and at least 0.01."""
    rl = {
        "rewards": {
            "reconstruction": {"weight": 0.0},
            "mean_color": {"weight": 1.0, "target": [1.0, 0.0, 0.0]},
        },
        "decoder": {
            "resolution": 32,  # the bar's calibration (the tiny preset's RL draws at 64 px)
            "grpo": {"group_size": 4, "sample_every": 1000, "clip_epsilon": 0.2, "beta": 0.0},
            "loop": _loop(40, 2e-2),
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
    assert last > first + max(0.01, 3 * spread), [round(r["reward_mean"], 3) for r in rows]


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
    """The decoder side of the (hidden_states) cold start; its encoder is checked by
    test_hidden_states_cold_start_resumes_to_the_same_pair."""
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


# --- issue 17: one LLM captions and conditions; the cold start trains through hidden states ----------


def _rl_cfg(**rl):
    return parse(resolve({"rl": rl}))


def _paths(cfg):
    from workflow_scripts.dag.rl import RLPaths
    from workflow_scripts.layout import RunLayout

    return RLPaths(cfg, RunLayout(Path("/run")), "E0", "D0", lambda names: {}, [])


def _model_of(stage: str) -> str:
    return f"<{stage}>"


@pytest.mark.parametrize("mode", ["hidden_states", "caption_text"])
def test_each_variant_reads_with_its_captioner_by_default(mode):
    rl = _paths(_rl_cfg(coldstart={"mode": mode}, variants=["none", "coldstart", "2a", "2b", "2a+2b"]))
    start = "<rl_coldstart>" if mode == "hidden_states" else "E0"  # the cold start's encoder, or none
    expected = {  # (captioner, reader, decoder)
        "none": ("E0", "E0", "D0"),
        "coldstart": (start, start, "<rl_coldstart>"),
        "2a": ("<rl_encoder>", "<rl_encoder>", "<rl_coldstart>"),
        "2b": (start, start, "<rl_decoder_2b>"),
        "2a+2b": ("<rl_encoder>", "<rl_encoder>", "<rl_decoder_2a+2b>"),
    }
    for variant, parts in expected.items():
        inputs = rl.variant_inputs(variant, _model_of)
        assert (inputs["captioner"], inputs["text_encoder"], inputs["decoder"]) == parts, variant
    assert rl.encoder_inputs(_model_of)["encoder"] == start  # 2a starts from the cold start's encoder
    assert rl.decoder_inputs("2b", _model_of)["text_encoder"] == start
    assert rl.decoder_inputs("2a+2b", _model_of)["text_encoder"] == "<rl_encoder>"
    # selection: the parts left out are the candidate checkpoint itself
    assert "text_encoder" not in rl.selection_inputs("rl_encoder", _model_of)
    coldstart = rl.selection_inputs("rl_coldstart", _model_of)
    if mode == "hidden_states":
        assert not {"captioner", "text_encoder", "decoder"} & set(coldstart)
    else:
        assert (coldstart["captioner"], coldstart["text_encoder"]) == ("E0", "E0")
    assert rl.selection_inputs("rl_decoder_2a+2b", _model_of)["text_encoder"] == "<rl_encoder>"


def test_reader_pretrained_is_the_frozen_encoder_rl_starts_from():
    rl = _paths(_rl_cfg(reader="pretrained", coldstart={"mode": "caption_text"}))
    for variant in ("2a", "2b", "2a+2b"):
        assert rl.variant_inputs(variant, _model_of)["text_encoder"] == "E0"
    assert rl.selection_inputs("rl_encoder", _model_of)["text_encoder"] == "E0"
    rl = _paths(_rl_cfg(reader="pretrained", coldstart={"mode": "hidden_states"}))
    assert rl.variant_inputs("2a", _model_of)["text_encoder"] == "<rl_coldstart>"


def test_variant_records_state_reader_and_coldstart(tmp_path):
    inputs = {p: tmp_path / p for p in ("captioner", "text_encoder", "decoder")}
    for path in inputs.values():
        path.mkdir()
    out = tmp_path / "v.json"
    command = stage_command(
        "rl_variant",
        tmp_path,
        inputs,
        wildcards={"variant": "2a"},
        outputs={"variant": out},
        launcher={"kind": "inline"},
        rl={"reader": "pretrained", "coldstart": {"mode": "caption_text"}},
    )
    subprocess.run(command, check=True, capture_output=True)
    assert json.loads(out.read_text())["protocol"] == {
        "reader": "pretrained",
        "coldstart": "caption_text",
        "conditioning": "fixed_length",  # models.decoder.conditioning (tiny)
    }
    from workflow_scripts.rl.stage import protocol

    rl = _rl_cfg().rl
    assert protocol(rl, "2a+2b") == {"reader": "captioner", "coldstart": "hidden_states"}
    assert protocol(rl, "none") == {"reader": "captioner", "coldstart": "none"}
    assert protocol(_rl_cfg(coldstart={"enabled": False}).rl, "2b")["coldstart"] == "none"


def _records(n: int, size: int = 32):
    from types import SimpleNamespace

    words = ["a red circle", "a small blue square left of a green triangle", "a star", "two big yellow stars"]
    return [
        SimpleNamespace(image=p, caption=words[i % len(words)], image_id=f"picture-{i}")
        for i, p in enumerate(_pictures(n, size))
    ]


def _tiny_pair(tiny_models):
    from workflow_scripts.models.decoder import load_decoder
    from workflow_scripts.models.encoder import load_encoder

    encoder = load_encoder(tiny_models["encoder"])
    decoder = load_decoder(
        tiny_models["decoder"], llm_hidden_size=64, projector_hidden_size=32, projector_seed=1
    )
    return encoder, decoder


def _caption_length_2a(tiny_models, max_new_tokens: int, reconstruction_steps: int, **kwargs):
    """A Stage-2a task on the tiny pair and one record, rewarded by caption length (G = 2):
    (cfg, task, encoder, decoder, records)."""
    from workflow_scripts.rl.common import SampleWriter
    from workflow_scripts.rl.encoder_rl import EncoderGRPO
    from workflow_scripts.train.batches import BatchPlan

    cfg = _rl_cfg(
        rewards={"reconstruction": {"weight": 0.0}, "caption_length": {"weight": 1.0, "target_words": 4}},
        encoder={
            "max_new_tokens": max_new_tokens,
            "reconstruction_steps": reconstruction_steps,
            "grpo": {"group_size": 2},
        },
    )
    encoder, decoder = _tiny_pair(tiny_models)
    records = _records(1)
    task = EncoderGRPO(
        cfg.rl.encoder,
        encoder,
        decoder,
        RewardModel(cfg.rl.rewards, {}),
        records,
        BatchPlan(1, 1, 1, 0),
        0,
        samples=SampleWriter(Path("unused"), cfg.rl.encoder.grpo, enabled=False),
        start=tiny_models["encoder"],
        **kwargs,
        **_reading(cfg),
    )
    return cfg, task, encoder, decoder, records


def _reading(cfg) -> dict:
    from workflow_scripts.models.conditioning import ConditioningSpec
    from workflow_scripts.models.encoder import CaptionPrompt

    return {
        "instruction": CaptionPrompt.of(cfg.inference.caption),
        "conditioning": ConditioningSpec.of(cfg.models.decoder),
        "max_text_tokens": cfg.models.decoder.max_text_tokens,
    }


@pytest.mark.parametrize("reader", ["captioner", "pretrained"])
def test_2a_rollouts_condition_through_the_reader_and_keep_the_adapter_free_reference(tiny_models, reader):
    """reader 'captioner': the policy's LLM with its adapter conditions the frozen decoder, so a changed
    adapter changes the conditioning of the same captions; 'pretrained': the adapter-disabled LLM."""
    from contextlib import nullcontext

    from workflow_scripts.models.conditioning import condition
    from workflow_scripts.models.encoder import load_encoder
    from workflow_scripts.rl.encoder_rl import completion_logprobs

    cfg, task, encoder, decoder, records = _caption_length_2a(tiny_models, 12, 2, reader=reader)
    policy = task.trainable()
    seen = []

    def generate(embeds, negative, **kwargs):
        seen.append((embeds, negative))
        return [records[0].image.resize((cfg.rl.encoder.resolution,) * 2)] * len(embeds)

    decoder.generate = generate
    captions = []
    task.reward = lambda inputs, reward=task.reward: captions.append(inputs.captions) or reward(inputs)

    def expected(captions):
        frozen = policy.disable_adapter() if reader == "pretrained" else nullcontext()
        with torch.no_grad(), frozen:
            return condition(encoder, decoder.projector, captions, task.conditioning)[0]

    def scale_adapter(factor: float) -> None:
        with torch.no_grad():
            for name, p in policy.named_parameters():
                if "lora_B" in name:
                    p.mul_(factor)

    with torch.no_grad():
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.2, generator=torch.Generator().manual_seed(len(name)))
    (first,) = task.micro_batches(0, 0, 1)
    torch.testing.assert_close(seen[0][0], expected(captions[0]))
    # the reference's log-probabilities are the adapter-free model's: a fresh load of the start encoder
    fresh = load_encoder(tiny_models["encoder"]).model
    fresh_logp = completion_logprobs(fresh, first.inputs, task.cfg.temperature, first.completion_mask)
    torch.testing.assert_close(first.ref_logp, fresh_logp)
    scale_adapter(-3.0)
    task._sample(0, 0)
    torch.testing.assert_close(seen[-1][0], expected(captions[-1]))
    scale_adapter(-1 / 3)  # the first adapter again: the same captions read as before the change
    changed = not torch.allclose(seen[-1][0], expected(captions[-1]))
    assert changed == (reader == "captioner")


def _coldstart_task(tiny_models, tiny_backbones, tmp_path=None, **coldstart):
    from workflow_scripts.rl.coldstart import ColdStart
    from workflow_scripts.train.batches import BatchPlan

    loop = {"steps": 4, "batch_size": 2, "micro_batch_size": 2, "optim": {"lr": 1e-2}}
    loop["checkpoint"] = {"every_steps": 2, "keep_last": 2}
    cfg = _rl_cfg(coldstart={"mode": "hidden_states", "loop": loop, **coldstart})
    encoder, decoder = _tiny_pair(tiny_models)
    records = _records(4)
    metadata = {
        "conditioning_role": "generate",
        "max_text_tokens": 64,
        "llm_hidden_size": 64,
        "resolution": 32,
    }
    return ColdStart(
        cfg.rl.coldstart,
        encoder,
        decoder,
        {"clip": load_backbone("clip", tiny_backbones / "clip")},
        {"clip": 1.0},
        records,
        BatchPlan(len(records), 2, 2, 0),
        0,
        start=tiny_models["decoder"],
        metadata=metadata,
        encoder_start=tiny_models["encoder"],
        **{**_reading(cfg), "max_text_tokens": 64},
    )


def test_hidden_states_cold_start_step_trains_llm_projector_and_dit(tiny_models, tiny_backbones):
    task = _coldstart_task(tiny_models, tiny_backbones)
    model = task.trainable()
    trained = {n: p for n, p in model.named_parameters() if p.requires_grad}
    groups = {
        "llm": [n for n in trained if n.startswith("llm.") and "lora_" in n],
        "projector": [n for n in trained if n.startswith("projector.")],
        "dit": [n for n in trained if n.startswith("transformer.") and "lora_" in n],
    }
    assert all(groups.values()) and sum(map(len, groups.values())) == len(trained)
    assert not any("visual" in n for n in trained)  # the vision tower stays frozen
    before = {n: p.detach().clone() for n, p in trained.items()}
    optimizer = torch.optim.Adam(trained.values(), lr=1e-3)
    (batch,) = task.micro_batches(0, 0, 1)
    loss = task.loss(model, batch, 0)
    loss = loss[0] if isinstance(loss, tuple) else loss
    loss.backward()
    optimizer.step()
    for group, names in groups.items():
        assert any(not torch.equal(before[n], trained[n]) for n in names), f"{group} did not change"


def test_hidden_states_conditioning_is_the_projected_answer_states_with_the_image(
    tiny_models, tiny_backbones
):
    task = _coldstart_task(tiny_models, tiny_backbones)
    model = task.trainable()
    with torch.no_grad():
        for name, p in model.llm.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.2, generator=torch.Generator().manual_seed(len(name)))
    (batch,) = task.micro_batches(0, 0, 1)
    (chunk,) = task.plan.micro_batches(0, 0, 1)
    with torch.no_grad():
        embeds, negative = model.conditioning(batch)
    encoder, lengths = task.encoder, []
    for row, sample in enumerate(chunk):
        record = task.dataset[sample.index]
        prompt = encoder.processor(
            text=[encoder.prompt(task.instruction)], images=[record.image], return_tensors="pt"
        )
        answer = encoder.tokenizer(record.caption, add_special_tokens=False)["input_ids"] + [
            encoder.end_of_turn_id
        ]
        ids = torch.cat([prompt["input_ids"][0], torch.tensor(answer)])[None]
        with torch.no_grad():
            out = model.llm(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                pixel_values=prompt["pixel_values"],
                image_grid_thw=prompt["image_grid_thw"],
                mm_token_type_ids=(ids == encoder.image_token_id).int(),
                output_hidden_states=True,
            )
            states = out.hidden_states[-1][:, -len(answer) :]
            want = model.projector(states, torch.ones(1, len(answer), dtype=torch.long))
        torch.testing.assert_close(embeds[row, : len(answer)], want[0], rtol=1e-4, atol=1e-5)
        assert torch.all(embeds[row, len(answer) :] == 0)
        lengths.append(len(answer))
    assert len(set(lengths)) > 1 and embeds.shape[1] == max(lengths) == negative.shape[1]


class _Killed(Exception):
    pass


@pytest.mark.slow
def test_hidden_states_cold_start_resumes_to_the_same_pair(tiny_models, tiny_backbones, tmp_path):
    from workflow_scripts.harness.paths import StagePaths
    from workflow_scripts.models.encoder import load_encoder
    from workflow_scripts.train.loop import train

    def run(folder: Path, kill_at: int | None = None):
        task = _coldstart_task(tiny_models, tiny_backbones)
        if kill_at is not None:
            loss = task.loss

            def dying(model, batch, step):
                if step == kill_at:
                    raise _Killed
                return loss(model, batch, step)

            task.loss = dying
        paths = StagePaths(folder / "checkpoints", folder / "metrics.jsonl", folder / "final")
        train(task, task.cfg.loop, paths, identity="same")

    run(tmp_path / "whole")
    with pytest.raises(_Killed):
        run(tmp_path / "cut", kill_at=3)  # after the checkpoint of step 2
    assert not (tmp_path / "cut/final").exists()
    # the checkpoint holds the encoder adapter over its start, loadable as an encoder
    step2 = tmp_path / "cut/checkpoints/step_00000002/model"
    assert load_encoder(step2).model is not None
    run(tmp_path / "cut")
    for part in ("model.safetensors", "projector/diffusion_pytorch_model.safetensors"):
        a, b = load_file(tmp_path / "whole/final" / part), load_file(tmp_path / "cut/final" / part)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), part
    a = load_file(tmp_path / "whole/final/transformer/diffusion_pytorch_model.safetensors")
    b = load_file(tmp_path / "cut/final/transformer/diffusion_pytorch_model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    start = load_file(tiny_models["encoder"] / "model.safetensors")
    final = load_file(tmp_path / "whole/final/model.safetensors")
    assert any(not torch.equal(start[k], final[k]) for k in start if k in final)  # the encoder trained
    rows = [r["loss"] for r in read(tmp_path / "whole/metrics.jsonl")]
    assert rows == [r["loss"] for r in read(tmp_path / "cut/metrics.jsonl")]


def test_2a_captions_never_contain_vision_placeholders(tiny_models):
    """An untrained encoder may prefer <|image_pad|>; fed back with the image in the 2a update, such a
    caption no longer matches the image's features ("tokens: 18, features: 16"). Captions are text."""
    _, task, encoder, decoder, records = _caption_length_2a(tiny_models, 8, 1)
    policy = task.trainable()
    decoder.generate = lambda embeds, negative, **kwargs: [records[0].image] * len(embeds)
    vision = encoder.vision_token_ids
    assert encoder.image_token_id in vision

    def prefer_image_pad(module, inputs, logits):
        logits[..., encoder.image_token_id] += 1e4
        return logits

    head = policy.get_output_embeddings()
    hook = head.register_forward_hook(prefer_image_pad)
    try:
        sample = task._sample(0, 0)
        texts = encoder.caption(
            [records[0].image], task.instruction, temperature=1.0, max_new_tokens=4, generator_seed=0
        )
    finally:
        hook.remove()
    assert not torch.isin(sample["completions"], torch.tensor(vision)).any()
    assert all("<|image_pad|>" not in t for t in texts)


def test_2a_rollouts_sample_the_policy_itself_whatever_the_generation_config(tiny_models):
    """Qwen2.5-VL-Instruct's generation_config.json sets top_k 1 / top_p 0.001 / repetition_penalty 1.05;
    generate() would apply them to the rollouts: every caption of a group the same (zero advantages) and
    sampled from a distribution other than the softmax(logits / T) the ratio reads."""
    _, task, _, decoder, records = _caption_length_2a(tiny_models, 8, 1)
    policy = task.trainable()
    decoder.generate = lambda embeds, negative, **kwargs: [records[0].image] * len(embeds)
    for config in {
        id(m.generation_config): m.generation_config
        for m in policy.modules()
        if hasattr(m, "generation_config")
    }.values():
        config.update(top_k=1, top_p=0.001, repetition_penalty=1.05)
    task.cfg = dataclasses.replace(task.cfg, grpo=dataclasses.replace(task.cfg.grpo, group_size=6))
    torch.manual_seed(0)
    captions = task._sample(0, 0)["captions"]
    assert len(captions) == 6 and len(set(captions)) > 1


# --- issue 19: RL step efficiency ----------------------------------------------------------------------


def _todays_caption(encoder, image, instruction, temperature: float, max_new_tokens: int, seed: int) -> str:
    """How a caption was sampled before batching: the global stream seeded, then transformers' sampling."""
    inputs = encoder.caption_inputs([image], instruction)
    torch.manual_seed(seed)
    with torch.no_grad():
        out = encoder.model.generate(
            **inputs,
            max_new_tokens=max_new_tokens,
            suppress_tokens=encoder.vision_token_ids,
            do_sample=True,
            temperature=temperature,
        )
    return encoder.tokenizer.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True).strip()


def test_batched_captions_are_the_one_at_a_time_captions_of_their_seeds(tiny_models):
    from workflow_scripts.models.encoder import CaptionPrompt, load_encoder

    encoder = load_encoder(tiny_models["encoder"])
    instruction = CaptionPrompt.of(_rl_cfg().inference.caption)
    images, seeds = _pictures(4, 32), [11, 12, 13, 14]
    sampling = {"temperature": 1.0, "max_new_tokens": 12}
    batched = encoder.caption(images, instruction, generator_seed=seeds, **sampling)
    alone = [
        encoder.caption([im], instruction, generator_seed=[s], **sampling)[0]
        for im, s in zip(images, seeds, strict=True)
    ]
    today = [
        _todays_caption(encoder, im, instruction, seed=s, **sampling)
        for im, s in zip(images, seeds, strict=True)
    ]
    assert batched == alone == today
    assert len(set(batched)) > 1  # the captions are samples, not one fixed string
    # a caption follows its own seed, not its place in the batch
    swapped = encoder.caption(images[:2], instruction, generator_seed=[seeds[1], seeds[0]], **sampling)
    assert swapped == [
        encoder.caption([images[0]], instruction, generator_seed=[seeds[1]], **sampling)[0],
        encoder.caption([images[1]], instruction, generator_seed=[seeds[0]], **sampling)[0],
    ]
    # one seed for a batch draws it from one stream, as before: torch.manual_seed, then generate
    inputs = encoder.caption_inputs(images, instruction)
    torch.manual_seed(5)
    with torch.no_grad():
        out = encoder.model.generate(
            **inputs,
            max_new_tokens=12,
            suppress_tokens=encoder.vision_token_ids,
            do_sample=True,
            temperature=1.0,
        )
    texts = encoder.tokenizer.batch_decode(out[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert encoder.caption(images, instruction, generator_seed=5, **sampling) == [t.strip() for t in texts]
    with pytest.raises(ValueError, match="one per image"):
        encoder.caption(images, instruction, generator_seed=seeds[:3], **sampling)


def _decoder_rl_task(tiny_models, records, folder: Path | None, **decoder):
    """A Stage-2b task on the tiny pair (captioner = reader), mean-colour reward, batch 2 of 1-caption
    micro-batches; its caption store in ``folder`` (None: in memory only)."""
    from workflow_scripts.rl.common import SampleWriter
    from workflow_scripts.rl.decoder_rl import DecoderGRPO, caption_store
    from workflow_scripts.train.batches import BatchPlan

    steps = decoder.pop("loop", {}).get("steps", 3)
    loop = {"steps": steps, "batch_size": 2, "micro_batch_size": 1, "checkpoint": {"every_steps": steps}}
    cfg = _rl_cfg(
        rewards={"reconstruction": {"weight": 0.0}, "mean_color": {"weight": 1.0, "target": [1.0, 0.0, 0.0]}},
        decoder={"grpo": {"group_size": 2}, "train_steps": 2, "loop": loop, **decoder},
    )
    encoder, decoder_model = _tiny_pair(tiny_models)
    reading = {**_reading(cfg), "max_text_tokens": 12}
    store = None
    if folder is not None:
        store = caption_store(
            folder, tiny_models["encoder"], cfg.rl.decoder, reading["instruction"], reading["max_text_tokens"]
        )
    task = DecoderGRPO(
        cfg.rl.decoder,
        encoder,
        encoder,
        decoder_model,
        RewardModel(cfg.rl.rewards, {}),
        records,
        BatchPlan(len(records), 2, 1, 0),
        0,
        samples=SampleWriter(Path("unused"), cfg.rl.decoder.grpo, enabled=False),
        start=tiny_models["decoder"],
        metadata={},
        store=store,
        **reading,
    )
    calls = []
    caption = encoder.caption
    encoder.caption = lambda images, *a, **k: calls.append(len(images)) or caption(images, *a, **k)
    task.trainable()
    return task, calls


def test_2b_captions_every_run_image_once_in_batches_and_a_resumed_job_reuses_them(tiny_models, tmp_path):
    """Captions are written before the first rollout, batched (caption_batch_size), each with the seed it
    had when images were captioned one at a time, stored in the work dir and reused by a resumed job."""
    from workflow_scripts.seeding import derive_seed

    records = _records(5)
    task, calls = _decoder_rl_task(tiny_models, records, tmp_path, caption_batch_size=3, loop={"steps": 2})
    used = task._indices(0, 2)  # 2 steps x 2 captions: 4 of the 5 images
    assert len(used) == 4
    task.micro_batches(0, 0, 1)
    assert calls == [3, 1]  # all four, before the first rollout, in batches of at most 3
    assert set(task.captions) == set(used)  # later rollouts find theirs: they caption nothing
    instruction, temperature = task.instruction, task.cfg.caption_temperature
    for index in used:  # the captions the one-at-a-time code drew (seed per dataset row)
        seed = derive_seed(0, "caption", index)
        assert task.captions[index] == _todays_caption(
            task.captioner, records[index].image, instruction, temperature, 12, seed
        )
    stored = json.loads((tmp_path / "captions.json").read_text())["captions"]
    assert {(e["image_id"], e["seed"]) for e in stored} == {
        (records[i].image_id, derive_seed(0, "caption", i)) for i in used
    }
    assert len({e["captioner"] for e in stored}) == 1

    resumed, calls = _decoder_rl_task(tiny_models, records, tmp_path, caption_batch_size=3, loop={"steps": 2})
    resumed.prepare_captions(1, 0, 1)  # as its first rollout (a resume at step 1) does
    assert calls == [] and all(resumed.captions[i] == task.captions[i] for i in resumed._indices(1, 2))

    # another captioner setting is another key: captioned again, in batches of 2
    other, calls = _decoder_rl_task(
        tiny_models, records, tmp_path, caption_batch_size=2, caption_temperature=1.3, loop={"steps": 2}
    )
    other.prepare_captions(0, 0, 1)
    assert calls == [2, 2]


def test_2b_caption_work_is_shared_out_over_processes(tiny_models, monkeypatch):
    """Each process captions every world-th missing image and all end with every caption."""
    from workflow_scripts.rl import decoder_rl

    records = _records(6)
    whole, _ = _decoder_rl_task(tiny_models, records, None, caption_batch_size=8)
    whole.prepare_captions(0, 0, 1)
    parts = []
    for rank in range(2):
        task, calls = _decoder_rl_task(tiny_models, records, None, caption_batch_size=8)
        monkeypatch.setattr(decoder_rl, "gather_objects", lambda mine: parts.append(list(mine)) or mine)
        task.prepare_captions(0, rank, 2)
        assert calls == [3]
    assert sorted(parts[0] + parts[1]) == sorted(whole.captions.items())


def test_2a_log_probs_read_only_the_completion_positions(tiny_models):
    """completion_logprobs equals the full-vocabulary log-softmax over every position on the completion
    tokens (fp32, atol 1e-6), and the LM head sees only the positions from the first completion target."""
    from workflow_scripts.rl.encoder_rl import completion_logprobs

    _, task, _, decoder, records = _caption_length_2a(tiny_models, 12, 1)
    policy = task.trainable()
    decoder.generate = lambda embeds, negative, **kwargs: [records[0].image] * len(embeds)
    (batch,) = task.micro_batches(0, 0, 1)
    inputs, mask, temperature = batch.inputs, batch.completion_mask, task.cfg.temperature
    with torch.no_grad():
        logits = policy(**inputs).logits[:, :-1].float() / temperature
    full = torch.log_softmax(logits, -1).gather(-1, inputs["input_ids"][:, 1:, None]).squeeze(-1)

    seen = []
    head = policy.get_output_embeddings()
    hook = head.register_forward_hook(lambda module, args, out: seen.append(args[0].shape[1]))
    try:
        with torch.no_grad():
            ours = completion_logprobs(policy, inputs, temperature, mask)
    finally:
        hook.remove()
    assert ours.shape == mask.shape
    on = mask.bool()
    torch.testing.assert_close(ours[on], full[on], rtol=0, atol=1e-6)
    prompt = task.encoder.caption_inputs([records[0].image], task.instruction)["input_ids"].shape[1]
    assert torch.all(ours[:, : prompt - 1] == 0)  # no row has a target before its first completion token
    width = inputs["input_ids"].shape[1]
    assert seen == [width - prompt + 1] and width - prompt + 1 < width / 2

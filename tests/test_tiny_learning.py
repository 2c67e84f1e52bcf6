"""Decoder pretraining spends its steps on the DiT: the frozen VAE and LLM run once per phase (the cache
gives the numbers re-encoding gives), the exported weights are the EMA the config asks for, and a seeded
run (cache and EMA on) resumes to the same weights."""

from __future__ import annotations

import dataclasses
import shutil
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from PIL import Image

from workflow_scripts.config.loader import parse, resolve
from workflow_scripts.data import scenes
from workflow_scripts.harness.paths import StagePaths
from workflow_scripts.models.decoder import load_decoder
from workflow_scripts.models.encoder import load_encoder
from workflow_scripts.pretrain.decoder_flow import DecoderFlowMatching, DecoderTrainable, caption_reliance
from workflow_scripts.train.batches import BatchPlan
from workflow_scripts.train.config import CheckpointConfig
from workflow_scripts.train.loop import train


@dataclass(frozen=True)
class _Record:
    image: Image.Image
    caption: str


def _scenes(count: int, side: int = 32) -> list[_Record]:
    rng = np.random.default_rng(3)
    out = []
    for _ in range(count):
        scene = scenes.sample_scene(rng, min_objects=1, max_objects=2)
        out.append(_Record(scenes.render(scene, 128).resize((side, side)), scenes.describe(scene)))
    return out


def _task(tiny_models, data, *, steps=4, **decoder_overrides) -> DecoderFlowMatching:
    cfg = parse(resolve({"preset": "tiny"}))
    decoder_cfg = dataclasses.replace(cfg.pretrain.decoder, **decoder_overrides)
    phase = decoder_cfg.phases[0]
    loop = dataclasses.replace(
        phase.loop,
        steps=steps,
        batch_size=4,
        micro_batch_size=2,
        log_every=1,
        checkpoint=CheckpointConfig(every_steps=2, keep_last=2),
    )
    phase = dataclasses.replace(phase, resolution=32, loop=loop)
    torch.manual_seed(0)
    encoder = load_encoder(tiny_models["encoder"])
    decoder = load_decoder(
        tiny_models["decoder"],
        llm_hidden_size=encoder.model.config.text_config.hidden_size,
        projector_hidden_size=cfg.models.decoder.projector_hidden_size,
        projector_seed=5,
    )
    plan = BatchPlan(len(data), loop.batch_size, loop.micro_batch_size, seed=11)
    return DecoderFlowMatching(
        decoder_cfg, phase, cfg.models.decoder, encoder, decoder, data, plan, 11, tiny_models["decoder"]
    )


def test_cached_latents_and_readings_give_the_uncached_loss(tiny_models):
    """Half the captions dropped, so both the cached captions and the cached empty caption are used."""
    data = _scenes(6)
    plain = _task(tiny_models, data, cache=False, caption_dropout=0.5)
    cached = _task(tiny_models, data, cache=True, caption_dropout=0.5)
    assert cached.cache is not None and plain.cache is None
    model_a, model_b = plain.trainable(), cached.trainable()
    model_b.load_state_dict(model_a.state_dict())
    dropped = []
    for step in range(3):
        for a, b in zip(plain.micro_batches(step, 0, 1), cached.micro_batches(step, 0, 1), strict=True):
            assert b.pixels is None  # the cached task decodes no image
            dropped += a.dropped
            loss_a, _ = plain.loss(model_a, a, step)
            loss_b, _ = cached.loss(model_b, b, step)
            assert loss_b.item() == pytest.approx(loss_a.item(), rel=1e-5, abs=1e-7)
            la, ha, ka = plain.frozen(a, "cpu")
            lb, hb, kb = cached.frozen(b, "cpu")
            torch.testing.assert_close(lb, la, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(hb, ha, rtol=1e-5, atol=1e-6)
            assert torch.equal(kb, ka)
    assert any(dropped) and not all(dropped)


def test_cache_refuses_the_release_reading(tiny_models):
    cfg = parse(resolve({"preset": "tiny"}))
    release = dataclasses.replace(cfg.models.decoder, conditioning="release")
    task = _task(tiny_models, _scenes(2), cache=False)
    with pytest.raises(ValueError, match=r"pretrain\.decoder\.cache needs models\.decoder\.conditioning"):
        DecoderFlowMatching(
            dataclasses.replace(task.cfg, cache=True),
            task.phase,
            release,
            task.encoder,
            task.decoder,
            task.dataset,
            task.plan,
            11,
            task.start,
        )


def test_ema_follows_diffusers_decay_schedule_by_hand():
    """decay_n = min(d, (1 + n) / (10 + n)) at the n-th update after the first (which copies)."""
    projector = torch.nn.Linear(1, 1, bias=False)
    module = DecoderTrainable(projector, torch.nn.Linear(1, 1, bias=False).requires_grad_(False))
    module.keep_ema(0.2)
    weights = [1.0, 3.0, -2.0, 5.0]
    expected = None
    for n, w in enumerate(weights):
        projector.weight.data.fill_(w)
        module.update_ema()
        decay = 0.0 if n == 0 else min(0.2, (1 + n) / (10 + n))
        expected = w if expected is None else decay * expected + (1 - decay) * w
    # decays 0, 2/11 = 0.1818, 0.2 (capped), 0.2
    by_hand = ((1.0 * (2 / 11) + 3.0 * (9 / 11)) * 0.2 + -2.0 * 0.8) * 0.2 + 5.0 * 0.8
    assert expected == pytest.approx(by_hand)
    assert module.ema_state.w0.item() == pytest.approx(by_hand, rel=1e-6)
    assert int(module.ema_state.updates) == 4
    # the frozen DiT weight is not averaged: only trained weights are tracked
    assert len(module.ema.shadow_params) == 1


def test_ema_config_is_checked():
    cfg = parse(resolve({"preset": "tiny"}))
    with pytest.raises(ValueError, match="ema_decay"):
        dataclasses.replace(cfg.pretrain.decoder, ema_decay=1.0)
    fsdp = dataclasses.replace(
        cfg.pretrain.decoder.phases[0],
        loop=dataclasses.replace(cfg.pretrain.decoder.phases[0].loop, distributed="fsdp"),
    )
    with pytest.raises(ValueError, match="needs the ddp engine"):
        dataclasses.replace(cfg.pretrain.decoder, ema_decay=0.9, phases=[fsdp])
    from tests.test_config import PAPER_PATHS

    paper = parse(resolve({"preset": "paper", **PAPER_PATHS}))
    assert (paper.pretrain.decoder.cache, paper.pretrain.decoder.ema_decay) == (False, 0.0)


def _projector(final) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(final / "projector" / "diffusion_pytorch_model.safetensors")


def test_export_is_the_ema_and_a_resumed_run_ends_on_the_same_weights(tiny_models, tmp_path):
    data = _scenes(6)
    task = _task(tiny_models, data, cache=True, ema_decay=0.5)
    seen = []
    hook = task.after_step

    def record(model, step):
        seen.append({k: v.detach().clone() for k, v in task.module.projector.state_dict().items()})
        hook(model, step)

    task.after_step = record
    whole = StagePaths(tmp_path / "a" / "ck", tmp_path / "a" / "m.jsonl", tmp_path / "a" / "final")
    train(task, task.phase.loop, whole, identity="t")
    assert len(seen) == 4
    expected = {}
    for n, weights in enumerate(seen):
        decay = 0.0 if n == 0 else min(0.5, (1 + n) / (10 + n))
        for k, v in weights.items():
            expected[k] = v if n == 0 else decay * expected[k] + (1 - decay) * v
    exported = _projector(whole.final)
    for k, v in expected.items():
        torch.testing.assert_close(exported[k], v)
    assert not torch.allclose(exported["net.0.weight"], seen[-1]["net.0.weight"])  # not the last step

    # the same seeded run cut after its step-2 checkpoint, then resumed in a fresh task
    cut = StagePaths(tmp_path / "b" / "ck", tmp_path / "b" / "m.jsonl", tmp_path / "b" / "final")
    first = _task(tiny_models, data, steps=2, cache=True, ema_decay=0.5)
    train(first, first.phase.loop, cut, identity="t")
    shutil.rmtree(cut.final)
    second = _task(tiny_models, data, steps=4, cache=True, ema_decay=0.5)
    summary = train(second, second.phase.loop, cut, identity="t")
    assert summary["resumed_from"] == 2
    resumed = _projector(cut.final)
    for k, v in exported.items():
        torch.testing.assert_close(resumed[k], v, rtol=0, atol=0)


def _blind(task: DecoderFlowMatching) -> None:
    """Zero the projector's output layer: every caption (and the empty one) becomes the same embedding."""
    last = [m for m in task.decoder.projector.modules() if isinstance(m, torch.nn.Linear)][-1]
    last.weight.data.zero_()
    if last.bias is not None:
        last.bias.data.zero_()


@pytest.mark.parametrize("conditioning", ["fixed_length", "release"])
def test_caption_reliance_is_zero_for_a_caption_blind_decoder_and_repeatable(tiny_models, conditioning):
    """The same task gives the same numbers, and the untouched projector reads captions, so the three
    differ. In 'fixed_length' a decoder whose projector outputs zeros for every caption scores
    own = other = empty exactly (shared seeded noise); in 'release' the caption's length still shows
    (its zero tokens are attended), so there only the repeatability is checked."""
    val = _scenes(3)
    task = _task(tiny_models, val, cache=False)
    task.conditioning = dataclasses.replace(task.conditioning, mode=conditioning)
    first = caption_reliance(task, val)
    assert first == caption_reliance(task, val)
    assert first["val_flow_images"] == 3
    assert len({first[f"val_flow_loss_{k}"] for k in ("own", "other", "empty")}) == 3
    assert caption_reliance(task, val[:1]) == {}  # no other caption to swap in
    if conditioning == "release":
        return
    _blind(task)
    blind = caption_reliance(task, val)
    assert blind["val_flow_loss_own"] == pytest.approx(blind["val_flow_loss_other"], rel=1e-6)
    assert blind["val_flow_loss_own"] == pytest.approx(blind["val_flow_loss_empty"], rel=1e-6)


def test_caption_reliance_is_the_training_loss_at_fixed_noise_levels(tiny_models):
    """Worked from the parts: for image k at sigma s, x_s = (1 - s) x0 + s e with e the k-th image's seeded
    noise, and the loss is mean((model(x_s, 1000 s, caption) - (e - x0))^2) (logit-normal weighting is 1);
    'other' reads image k + 1's caption (derangement), 'empty' the dropped caption."""
    from workflow_scripts.models.conditioning import read
    from workflow_scripts.pretrain.decoder_flow import VAL_SIGMAS, _to_tensor
    from workflow_scripts.seeding import derive_seed

    val = _scenes(2)
    task = _task(tiny_models, val, cache=False)
    model = DecoderTrainable(task.decoder.projector, task.decoder.transformer).eval()
    expected = {"own": [], "other": [], "empty": []}
    with torch.no_grad():
        for k, record in enumerate(val):
            x0 = task.decoder.to_latents(_to_tensor(record.image)[None])
            gen = torch.Generator().manual_seed(derive_seed(task.seed, "val_noise", k))
            noise = torch.randn((len(VAL_SIGMAS), *x0.shape[1:]), generator=gen)
            for s, e in zip(VAL_SIGMAS, noise, strict=True):
                for name, caption in (
                    ("own", record.caption),
                    ("other", val[(k + 1) % 2].caption),
                    ("empty", ""),
                ):
                    reading = read(task.encoder, [caption], task.conditioning)
                    pred = model(
                        (1 - s) * x0 + s * e[None],
                        torch.tensor([1000.0 * s]),
                        reading.hidden,
                        reading.keep,
                        task.decoder.pooled(1),
                    )
                    expected[name].append(float(((pred - (e[None] - x0)) ** 2).mean()))
    got = caption_reliance(task, val)
    for name, values in expected.items():
        assert got[f"val_flow_loss_{name}"] == pytest.approx(np.mean(values), rel=1e-4)


def test_final_figures_reach_the_warehouse_at_the_last_step(tmp_path):
    """The merged row is the final step's: ingest stores it and final_metrics finds it; the other rows'
    count and values are untouched."""
    import json

    from workflow_scripts.pretrain.decoder_flow import add_final_metrics
    from workflow_scripts.report import queries as q
    from workflow_scripts.train.metrics import read
    from workflow_scripts.warehouse import ingest
    from workflow_scripts.warehouse.db import writer

    final = tmp_path / "final"
    final.mkdir()
    log = final / "metrics.jsonl"
    log.write_text("".join(json.dumps({"step": s, "loss": 1.0 / s}) + "\n" for s in (1, 2, 4)))
    add_final_metrics(log, {"val_flow_loss_own": 0.25, "val_flow_loss_other": 0.5})
    rows = read(log)
    assert [r["step"] for r in rows] == [1, 2, 4] and rows[-1]["loss"] == 0.25
    with writer(tmp_path / "w.duckdb") as con:
        ingest.training(con, "ci", "pretrain_decoder_lowres", final, None)
        found = q.final_metrics(con, "ci", "pretrain_decoder_lowres", "val_flow_loss_")
    assert found == {"val_flow_loss_own": 0.25, "val_flow_loss_other": 0.5}
    with pytest.raises(ValueError, match="no metrics row"):
        (tmp_path / "empty.jsonl").write_text("")
        add_final_metrics(tmp_path / "empty.jsonl", {"val_flow_loss_own": 0.1})

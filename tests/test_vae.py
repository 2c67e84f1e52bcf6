"""The tiny decoder's VAE stage: it learns to invert itself, fits SD3's latent normalisation, and the
decoder pretraining starts from it."""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL
from PIL import Image

from workflow_scripts.config.loader import parse, resolve
from workflow_scripts.data import scenes
from workflow_scripts.harness.paths import StagePaths
from workflow_scripts.reward.pixels import psnr, to_unit
from workflow_scripts.train.batches import BatchPlan
from workflow_scripts.train.loop import train
from workflow_scripts.vae.training import VAETraining, latent_factors


@dataclass(frozen=True)
class _Image:
    image: Image.Image


def _scenes(count: int, side: int = 32) -> list[_Image]:
    rng = np.random.default_rng(0)
    return [_Image(scenes.render(scenes.sample_scene(rng), 128).resize((side, side))) for _ in range(count)]


def _reconstruction_psnr(vae: AutoencoderKL, images: list[_Image]) -> float:
    originals = to_unit([i.image for i in images])
    with torch.no_grad():
        decoded = vae.decode(vae.encode(originals * 2 - 1).latent_dist.mode()).sample
    return float(psnr(originals, (decoded + 1) / 2).mean())


def test_psnr_by_hand():
    a = torch.zeros(1, 3, 2, 2)
    b = torch.full((1, 3, 2, 2), 0.1)  # error 25.5 on the 0..255 scale everywhere
    assert psnr(a, b).item() == pytest.approx(20 * np.log10(255 / 25.5), rel=1e-5)


def test_training_inverts_the_random_vae_and_exports_the_decoder_base_with_it(tiny_models, tmp_path):
    """60 steps on 32 rendered scenes: the random VAE's reconstructions (about as good as a grey guess)
    become clearly better, and the export is the whole decoder base with SD3's latent normalisation
    fitted to the trained VAE."""
    cfg = parse(resolve({"preset": "tiny"}))
    loop = json.loads(json.dumps(resolve({"preset": "tiny"})["vae"]["loop"]))
    loop.update(steps=60, log_every=10, checkpoint={"every_steps": 30, "keep_last": 1})
    from workflow_scripts.train.config import CheckpointConfig, LoopConfig, OptimConfig

    loop = LoopConfig(
        **{
            **loop,
            "optim": OptimConfig(**loop["optim"]),
            "checkpoint": CheckpointConfig(**loop["checkpoint"]),
        }
    )
    images = _scenes(32)
    base = tiny_models["decoder"]
    vae = AutoencoderKL.from_pretrained(base / "vae")
    before = _reconstruction_psnr(vae, images)
    task = VAETraining(base, vae, images, BatchPlan(len(images), 16, 16, seed=1), cfg.vae.kl_weight)
    paths = StagePaths(tmp_path / "checkpoints", tmp_path / "metrics.jsonl", tmp_path / "final")
    train(task, loop, paths, identity="test")

    trained = AutoencoderKL.from_pretrained(paths.final / "vae")
    after = _reconstruction_psnr(trained, images)
    assert after > before + 3.0, (before, after)
    # the rest of the decoder base is carried over unchanged
    for part in ("transformer", "scheduler", "text_encoder", "tokenizer", "model_index.json"):
        assert (paths.final / part).exists(), part
    # (z - shift) * scale is standardised over the training images, as SD3.5's factors are
    shift, scale = trained.config.shift_factor, trained.config.scaling_factor
    with torch.no_grad():
        z = trained.encode(to_unit([i.image for i in images]) * 2 - 1).latent_dist.mode()
    normalised = (z - shift) * scale
    assert abs(float(normalised.mean())) < 1e-3 and float(normalised.std()) == pytest.approx(1.0, rel=1e-3)
    assert (shift, scale) == pytest.approx(latent_factors(trained, images))


def test_vae_stage_is_tiny_only_and_reads_a_data_resolution():
    from tests.test_config import PAPER_PATHS

    assert parse(resolve({})).trains_vae
    # a published decoder's VAE is used as it is, whatever vae.enabled says
    assert not parse(resolve({"preset": "paper", "vae": {"enabled": True}, **PAPER_PATHS})).trains_vae
    with pytest.raises(ValueError, match=r"vae resolution 48 is not one of data.resolutions"):
        parse(resolve({"vae": {"resolution": 48}}))


@pytest.mark.slow
def test_the_decoder_pretraining_starts_from_the_trained_vae(tiny_dag):
    run = tiny_dag / "results" / "ci"
    vae_final = run / "train" / "vae_train" / "final"
    quality = json.loads((vae_final / "reconstruction.json").read_text())
    assert quality["val_images"] == 4 and np.isfinite(quality["psnr_db"])
    assert (vae_final / "reconstructions.png").exists()
    provenance = json.loads(
        (run / "train" / "pretrain_decoder_lowres" / "final" / "provenance.json").read_text()
    )
    assert provenance["inputs"]["decoder"]["path"] == "results/ci/train/vae_train/final"


@pytest.mark.slow
def test_the_report_shows_each_autoencoders_val_psnr_against_its_floor(tiny_dag):
    from tests.conftest import report_row, stored_val_metrics

    run = tiny_dag / "results" / "ci"
    quality = json.loads((run / "train" / "vae_train" / "final" / "reconstruction.json").read_text())
    stored = stored_val_metrics(tiny_dag, "ci", "vae_train")
    assert stored["val_psnr_db"] == pytest.approx(quality["psnr_db"])
    section, row = report_row(run / "report" / "report.html", "autoencoders", "vae_train")
    assert f"<td>{quality['psnr_db']:.2f}</td><td>{quality['grey_psnr_db']:.2f}</td>" in row
    assert 'alt="vae_train reconstructions"' in section  # the strip is embedded

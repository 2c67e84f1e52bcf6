"""The tiny VAE's training task (reconstruction MSE + KL) and its validation measurement."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import AutoencoderKL
from PIL import Image

from workflow_scripts.data.shards import ShardDataset
from workflow_scripts.reward.pixels import psnr, to_pil, to_unit
from workflow_scripts.seeding import derive_seed
from workflow_scripts.train.batches import BatchPlan


@dataclass
class VAETraining:
    """Reconstruction MSE + KL of the decoder base's AutoencoderKL; the final export is the decoder base
    with this VAE in place of its own (and SD3's latent normalisation fitted to it), so every later stage
    loads it as it would load SD3.5."""

    base: Path  # the decoder directory (diffusers SD3 layout) whose VAE is trained
    vae: AutoencoderKL
    images: ShardDataset
    plan: BatchPlan
    kl_weight: float
    name: str = "vae_train"

    def trainable(self) -> torch.nn.Module:
        return self.vae.train()

    def micro_batches(self, step: int, rank: int, world: int) -> list[tuple[torch.Tensor, int]]:
        """(images in [-1, 1], the seed of their posterior sample): a resumed step draws the same noise."""
        return [
            (
                to_unit([self.images[s.index].image for s in chunk]) * 2 - 1,
                derive_seed(self.plan.seed, "posterior", chunk[0].position),
            )
            for chunk in self.plan.micro_batches(step, rank, world)
        ]

    def loss(self, model: torch.nn.Module, batch: tuple[torch.Tensor, int], step: int):
        pixels, seed = batch
        device = next(model.parameters()).device
        pixels = pixels.to(device)
        posterior = model.encode(pixels).latent_dist
        latents = posterior.sample(generator=torch.Generator(device=device).manual_seed(seed))
        reconstructed = model.decode(latents).sample
        mse = torch.mean((reconstructed - pixels) ** 2)
        kl = posterior.kl().mean() / pixels[0].numel()  # per pixel, so kl_weight does not scale with side
        return mse + self.kl_weight * kl, {"mse": mse.item(), "kl": kl.item()}

    def export(self, model: torch.nn.Module, out_dir: Path, *, final: bool) -> None:
        if not final:
            model.save_pretrained(out_dir)
            return
        shutil.copytree(
            self.base, out_dir, dirs_exist_ok=True, ignore=shutil.ignore_patterns("vae", "provenance.json")
        )
        shift, scale = latent_factors(model, self.images)
        model.register_to_config(shift_factor=shift, scaling_factor=scale)
        model.save_pretrained(out_dir / "vae")


@torch.no_grad()
def latent_factors(vae: AutoencoderKL, images: ShardDataset, count: int = 256) -> tuple[float, float]:
    """SD3's normalisation of its latents, fitted to this VAE: ``(z - shift) * scale`` has zero mean and
    unit variance over the training images (SD3.5 ships shift 0.0609, scale 1.5305 fitted the same way)."""
    pixels = to_unit([images[i].image for i in range(min(count, len(images)))]) * 2 - 1
    latents = vae.encode(pixels).latent_dist.mode()
    return float(latents.mean()), float(1.0 / latents.std())


@torch.no_grad()
def reconstruction_quality(vae: AutoencoderKL, shards: Path, resolution: int, out_dir: Path) -> dict:
    """Mean PSNR on the validation split (and the floor of a constant mid-grey guess), with a strip of
    originals over reconstructions."""
    val = ShardDataset(shards, "val", resolution)
    if not len(val):
        raise ValueError(f"{shards}: the val split is empty; set data.splits.val_count >= 1 to measure PSNR")
    originals = to_unit([val[i].image for i in range(len(val))])
    reconstructed = (vae.decode(vae.encode(originals * 2 - 1).latent_dist.mode()).sample + 1) / 2
    shown = min(8, len(val))
    strip = Image.new("RGB", (resolution * shown, resolution * 2))
    pairs = zip(to_pil(originals[:shown]), to_pil(reconstructed[:shown]), strict=True)
    for n, (a, b) in enumerate(pairs):
        strip.paste(a, (n * resolution, 0))
        strip.paste(b, (n * resolution, resolution))
    strip.save(out_dir / "reconstructions.png")
    return {
        "val_images": len(val),
        "psnr_db": float(psnr(originals, reconstructed).mean()),
        "grey_psnr_db": float(psnr(originals, torch.full_like(originals, 0.5)).mean()),
    }

"""The tiny VQ tokenizer's training task: reconstruction MSE + codebook/commitment loss."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from workflow_scripts.data.shards import ShardDataset
from workflow_scripts.train.batches import BatchPlan
from workflow_scripts.unitoken.vq import VQTokenizer, psnr, to_images, to_pixels

log = logging.getLogger(__name__)


@dataclass
class VQTraining:
    """Reconstruction MSE + the quantizer's codebook/commitment loss on the data stage's images."""

    tokenizer: VQTokenizer
    images: ShardDataset
    plan: BatchPlan
    commitment: float
    name: str = "unitoken_vq"

    def trainable(self) -> torch.nn.Module:
        # start the codebook on encoder outputs, so every entry is near the data from step 0
        count = self.tokenizer.codebook_size
        with torch.no_grad():
            pixels = to_pixels(
                [self.images[i % len(self.images)].image for i in range(max(8, count // 16))],
                self.tokenizer.config.resolution,
            )
            vqvae = self.tokenizer.vqvae
            latents = vqvae.quant_conv(vqvae.encoder(pixels)).permute(0, 2, 3, 1).flatten(0, 2)
            generator = torch.Generator().manual_seed(self.plan.seed)
            picks = torch.randint(len(latents), (count,), generator=generator)
            vqvae.quantize.embedding.weight.copy_(latents[picks])
        return self.tokenizer.train()

    def micro_batches(self, step: int, rank: int, world: int) -> list[torch.Tensor]:
        side = self.tokenizer.config.resolution
        return [
            to_pixels([self.images[s.index].image for s in chunk], side)
            for chunk in self.plan.micro_batches(step, rank, world)
        ]

    def loss(self, model: torch.nn.Module, batch: torch.Tensor, step: int):
        device = next(model.parameters()).device
        batch = batch.to(device)
        reconstructed, codebook_loss = model(batch)
        mse = torch.mean((reconstructed - batch) ** 2)
        return mse + self.commitment * codebook_loss, {"mse": mse.item(), "codebook": codebook_loss.item()}

    def export(self, model: torch.nn.Module, out_dir: Path, *, final: bool) -> None:
        model.save_pretrained(out_dir)


@torch.no_grad()
def reconstruction_quality(tokenizer: VQTokenizer, shards: Path, out_dir: Path) -> dict:
    """Mean PSNR and codebook use on the validation split, and a strip of originals over reconstructions."""
    val = ShardDataset(shards, "val", tokenizer.config.resolution)
    if not len(val):
        raise ValueError(f"{shards}: the val split is empty; set data.splits.val_count >= 1 to measure PSNR")
    originals = to_pixels([val[i].image for i in range(len(val))], tokenizer.config.resolution)
    codes, _, _ = tokenizer.encode(originals)
    reconstructed = tokenizer.decode(codes)
    shown = min(8, len(val))
    strip = Image.new("RGB", (tokenizer.config.resolution * shown, tokenizer.config.resolution * 2))
    for n, (a, b) in enumerate(
        zip(to_images(originals[:shown]), to_images(reconstructed[:shown]), strict=True)
    ):
        strip.paste(a, (n * a.width, 0))
        strip.paste(b, (n * a.width, a.height))
    strip.save(out_dir / "reconstructions.png")
    return {
        "val_images": len(val),
        "psnr_db": float(psnr(originals, reconstructed).mean()),
        "codes_used": int(codes.unique().numel()),
        "codebook_size": tokenizer.codebook_size,
    }

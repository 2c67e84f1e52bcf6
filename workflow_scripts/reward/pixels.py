"""Images as the reward backbones read them: PIL <-> (B, 3, H, W) float in [0, 1]."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image


def to_unit(images: list[Image.Image]) -> torch.Tensor:
    """PIL images -> (B, 3, H, W) float in [0, 1]."""
    return torch.stack(
        [torch.from_numpy(np.asarray(im, dtype=np.float32) / 255.0).permute(2, 0, 1) for im in images]
    )


def to_pil(pixels: torch.Tensor) -> list[Image.Image]:
    array = (pixels.detach().float().clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(a) for a in array]


def psnr(original: torch.Tensor, reconstructed: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB of (B, 3, H, W) images in [0, 1], on the 0..255 scale of the PNGs."""
    a, b = original.clamp(0, 1) * 255, reconstructed.clamp(0, 1) * 255
    mse = ((a - b) ** 2).flatten(1).mean(1).clamp_min(1e-10)
    return 10 * torch.log10(255.0**2 / mse)

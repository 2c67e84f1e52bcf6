"""The VQ image tokenizer: transformers' Chameleon VQ-VAE encoder + quantizer, and the pixel decoder it lacks.

transformers ships only the encoder half of Chameleon's VQGAN (``ChameleonVQVAE``: encoder, quant_conv,
quantizer, post_quant_conv). :class:`VQDecoder` is the other half, built from the same blocks in the
layout of the released tokenizer checkpoint (taming-transformers' ``Decoder``: ``decoder.conv_in``,
``decoder.mid.*``, ``decoder.up.<level>.block.<i>`` with ``num_res_blocks + 1`` blocks per level,
``decoder.up.<level>.upsample.conv``, ``decoder.norm_out``, ``decoder.conv_out``), so the released
``vqgan.ckpt`` loads into it key for key (:func:`load_released_tokenizer`).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import ChameleonVQVAEConfig
from transformers.models.chameleon.modeling_chameleon import (
    ChameleonVQVAE,
    ChameleonVQVAEEncoderAttnBlock,
    ChameleonVQVAEEncoderResnetBlock,
)

from workflow_scripts import atomic
from workflow_scripts.unitoken.config import TinyVQSpec

DECODER_FILE = "decoder.safetensors"


class _Upsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, kernel_size=3, stride=1, padding=1)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(hidden, scale_factor=2.0, mode="nearest"))


class VQDecoder(nn.Module):
    """Latents (``latent_channels`` × h × w) → pixels in [-1, 1], mirroring the encoder's levels."""

    def __init__(self, config: ChameleonVQVAEConfig):
        super().__init__()
        multipliers = list(config.channel_multiplier)
        levels = len(multipliers)
        attn_at = set(config.attn_resolutions or [])
        block_in = config.base_channels * multipliers[-1]
        resolution = config.resolution // 2 ** (levels - 1)
        self.conv_in = nn.Conv2d(config.latent_channels, block_in, kernel_size=3, stride=1, padding=1)
        self.mid = nn.Module()
        self.mid.block_1 = ChameleonVQVAEEncoderResnetBlock(config, block_in, block_in)
        self.mid.attn_1 = ChameleonVQVAEEncoderAttnBlock(block_in)
        self.mid.block_2 = ChameleonVQVAEEncoderResnetBlock(config, block_in, block_in)
        ups: list[nn.Module] = []
        for level in reversed(range(levels)):
            block_out = config.base_channels * multipliers[level]
            up = nn.Module()
            up.block, up.attn = nn.ModuleList(), nn.ModuleList()
            for _ in range(config.num_res_blocks + 1):
                up.block.append(ChameleonVQVAEEncoderResnetBlock(config, block_in, block_out))
                block_in = block_out
                if resolution in attn_at:
                    up.attn.append(ChameleonVQVAEEncoderAttnBlock(block_in))
            if level != 0:
                up.upsample = _Upsample(block_in)
                resolution *= 2
            ups.insert(0, up)  # indexed by level, as in the checkpoint
        self.up = nn.ModuleList(ups)
        self.norm_out = nn.GroupNorm(num_groups=32, num_channels=block_in, eps=1e-6, affine=True)
        self.conv_out = nn.Conv2d(block_in, config.in_channels, kernel_size=3, stride=1, padding=1)

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        hidden = self.conv_in(latents)
        hidden = self.mid.block_2(self.mid.attn_1(self.mid.block_1(hidden)))
        for level in reversed(range(len(self.up))):
            up = self.up[level]
            for i, block in enumerate(up.block):
                hidden = block(hidden)
                if len(up.attn):
                    hidden = up.attn[i](hidden)
            if level != 0:
                hidden = up.upsample(hidden)
        hidden = self.norm_out(hidden)
        return self.conv_out(hidden * torch.sigmoid(hidden))


class VQTokenizer(nn.Module):
    """Encoder + quantizer (transformers) and decoder (ours): images ↔ grids of codebook indices."""

    def __init__(self, config: ChameleonVQVAEConfig):
        super().__init__()
        self.config = config
        self.vqvae = ChameleonVQVAE(config)
        self.decoder = VQDecoder(config)

    @property
    def grid(self) -> int:
        """Codes per image side."""
        return self.config.resolution // 2 ** (len(self.config.channel_multiplier) - 1)

    @property
    def codebook_size(self) -> int:
        return self.config.num_embeddings

    def encode(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Pixels in [-1, 1] → (codes B×h×w, quantized latents, codebook + commitment loss)."""
        out = self.vqvae.encode(pixels)
        grid = out.quantized_last_hidden_state.shape[-2:]
        codes = out.image_tokens.view(pixels.shape[0], *grid)
        return codes, out.quantized_last_hidden_state, out.embedding_loss

    def decode_latents(self, quantized: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.vqvae.post_quant_conv(quantized))

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes B×h×w → pixels in [-1, 1]."""
        quantized = self.vqvae.quantize.embedding(codes).permute(0, 3, 1, 2).contiguous()
        return self.decode_latents(quantized)

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        _, quantized, codebook_loss = self.encode(pixels)
        return self.decode_latents(quantized), codebook_loss

    def save_pretrained(self, out_dir: Path) -> None:
        """``vqvae/`` as a transformers model directory, the decoder beside it."""
        out_dir = Path(out_dir)
        self.vqvae.save_pretrained(out_dir / "vqvae")
        save_file({k: v.contiguous() for k, v in self.decoder.state_dict().items()}, out_dir / DECODER_FILE)

    @classmethod
    def from_pretrained(cls, path: Path | str) -> VQTokenizer:
        path = Path(path)
        missing = [p for p in (path / "vqvae" / "config.json", path / DECODER_FILE) if not p.exists()]
        if missing:
            raise FileNotFoundError(
                f"{path} is not a VQ tokenizer directory (missing {', '.join(str(m) for m in missing)}); "
                "train one with the unitoken_vq rule or convert the released checkpoint with "
                "`python -m workflow_scripts.unitoken.vq <vqgan.ckpt> <vqgan.yaml> <out_dir>`"
            )
        vqvae = ChameleonVQVAE.from_pretrained(path / "vqvae")
        tokenizer = cls(vqvae.config)
        tokenizer.vqvae = vqvae
        tokenizer.decoder.load_state_dict(load_file(path / DECODER_FILE))
        return tokenizer.eval()


def to_pixels(images: list[Image.Image], resolution: int) -> torch.Tensor:
    """PIL images → B×3×R×R in [-1, 1] (Chameleon's normalisation: x / 127.5 - 1)."""
    arrays = [
        np.asarray(image.convert("RGB").resize((resolution, resolution), Image.BICUBIC), dtype=np.float32)
        for image in images
    ]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2) / 127.5 - 1.0


def to_images(pixels: torch.Tensor) -> list[Image.Image]:
    array = ((pixels.detach().float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1)
    return [Image.fromarray(a.cpu().numpy()) for a in array]


def psnr(original: torch.Tensor, reconstructed: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB of [-1, 1] images, on the 0..255 scale of the PNGs."""
    a = (original.clamp(-1, 1) + 1) * 127.5
    b = (reconstructed.clamp(-1, 1) + 1) * 127.5
    mse = ((a - b) ** 2).flatten(1).mean(1).clamp_min(1e-10)
    return 10 * torch.log10(255.0**2 / mse)


def config_from_released_yaml(params: dict) -> ChameleonVQVAEConfig:
    """taming-transformers' VQModel params (vqgan.yaml ``model.params``) → ChameleonVQVAEConfig."""
    dd = params["ddconfig"]
    if dd.get("double_z"):
        raise ValueError("double_z VQGANs are not Chameleon tokenizers")
    return ChameleonVQVAEConfig(
        embed_dim=params["embed_dim"],
        num_embeddings=params["n_embed"],
        double_latent=False,
        latent_channels=dd["z_channels"],
        resolution=dd["resolution"],
        in_channels=dd["in_channels"],
        base_channels=dd["ch"],
        channel_multiplier=list(dd["ch_mult"]),
        num_res_blocks=dd["num_res_blocks"],
        attn_resolutions=list(dd.get("attn_resolutions") or []),
        dropout=dd.get("dropout", 0.0),
    )


def load_released_tokenizer(state_dict: dict[str, torch.Tensor], config: ChameleonVQVAEConfig) -> VQTokenizer:
    """The released Chameleon tokenizer's weights (vqgan.ckpt ``state_dict``) in a :class:`VQTokenizer`.

    ``encoder.*``, ``quant_conv.*``, ``quantize.*`` and ``post_quant_conv.*`` go to transformers'
    ChameleonVQVAE, ``decoder.*`` to ours; the training-only ``loss.*`` (discriminator, LPIPS) is
    dropped. Any other missing or unexpected key, or a shape mismatch, is an error naming the keys.
    """
    tokenizer = VQTokenizer(config)
    decoder = {k.removeprefix("decoder."): v for k, v in state_dict.items() if k.startswith("decoder.")}
    vqvae = {
        k: v
        for k, v in state_dict.items()
        if k.split(".")[0] in ("encoder", "quant_conv", "quantize", "post_quant_conv")
    }
    unused = sorted(k for k in state_dict if k not in vqvae and not k.startswith(("decoder.", "loss.")))
    if unused:
        raise ValueError(f"unexpected keys in the tokenizer checkpoint: {unused[:8]}")
    for module, weights, prefix in ((tokenizer.vqvae, vqvae, ""), (tokenizer.decoder, decoder, "decoder.")):
        expected = module.state_dict()
        wrong = [
            f"{prefix}{k}: {tuple(v.shape)} != {tuple(expected[k].shape)}"
            for k, v in weights.items()
            if k in expected and v.shape != expected[k].shape
        ]
        missing = sorted(set(expected) - set(weights))
        extra = sorted(set(weights) - set(expected))
        if wrong or missing or extra:
            raise ValueError(
                f"tokenizer checkpoint does not match the config: shapes {wrong[:4]}, "
                f"missing {[prefix + k for k in missing[:4]]}, unexpected {[prefix + k for k in extra[:4]]}"
            )
        module.load_state_dict(weights)
    return tokenizer.eval()


def convert_released(checkpoint: Path, yaml_file: Path, out_dir: Path) -> Path:
    """The Chameleon release's vqgan.ckpt + vqgan.yaml → a directory VQTokenizer.from_pretrained reads."""
    import yaml

    params = yaml.safe_load(Path(yaml_file).read_text())["model"]["params"]
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    tokenizer = load_released_tokenizer(state.get("state_dict", state), config_from_released_yaml(params))
    with atomic.directory(Path(out_dir)) as tmp:
        tokenizer.save_pretrained(tmp)
        (tmp / "source.json").write_text(json.dumps({"checkpoint": str(checkpoint), "yaml": str(yaml_file)}))
    return Path(out_dir)


if __name__ == "__main__":
    import sys

    convert_released(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]))


def vq_config(spec: TinyVQSpec) -> ChameleonVQVAEConfig:
    return ChameleonVQVAEConfig(
        embed_dim=spec.embed_dim,
        num_embeddings=spec.codebook_size,
        latent_channels=spec.latent_channels,
        resolution=spec.resolution,
        base_channels=spec.base_channels,
        channel_multiplier=list(spec.channel_multiplier),
        num_res_blocks=spec.num_res_blocks,
    )

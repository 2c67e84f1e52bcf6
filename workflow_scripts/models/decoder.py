"""The decoder: SD3's MMDiT + VAE + flow-matching scheduler, conditioned through the encoder's LLM.

As in the authors' release, a caption is read by the Qwen2.5-VL LLM; its last hidden states pass a
projector MLP (LLM width -> hidden -> GELU -> DiT joint-attention width) and become the DiT's
``prompt_embeds``. SD3's own CLIP encoders only give the pooled embedding of the empty prompt, computed
once from the base model and stored with every trained decoder.

A trained decoder directory is self-contained::

    transformer/  vae/  scheduler/  projector/  conditioning.safetensors  uae_decoder.json

or, for a LoRA checkpoint taken during training, adapter-only: ``transformer_adapter/ projector/
uae_decoder.json`` whose ``base`` names the decoder directory the adapter applies to.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from PIL import Image
from safetensors.torch import load_file, save_file

from workflow_scripts.models.paths import DIFFUSERS_FILES, require_model_dir

FORMAT_FILE = "uae_decoder.json"
FORMAT_VERSION = 1


class CaptionProjector(ModelMixin, ConfigMixin):
    """LLM hidden states -> DiT joint-attention width (release: 2048 -> 8192 -> GELU -> 4096).

    ``merge`` > 1 concatenates each run of ``merge`` consecutive states before the MLP, as Qwen2.5-VL's
    patch merger does with 2x2 patches: the DiT reads ``merge`` times fewer text tokens, every state
    still reaching it through the first linear layer. The release projects every position (merge 1)."""

    @register_to_config
    def __init__(self, in_features: int, hidden_features: int, out_features: int, merge: int = 1) -> None:
        super().__init__()
        if merge < 1:
            raise ValueError(f"projector merge must be >= 1, got {merge}")
        self.net = torch.nn.Sequential(
            torch.nn.Linear(in_features * merge, hidden_features),
            torch.nn.GELU(),
            torch.nn.Linear(hidden_features, out_features),
        )

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        merge = self.config.merge
        if merge > 1:
            batch, length, width = hidden.shape
            pad = -length % merge  # a last, partial run is completed with absent (zero, masked) states
            hidden = torch.nn.functional.pad(hidden * mask[..., None].to(hidden.dtype), (0, 0, 0, pad))
            mask = torch.nn.functional.pad(mask, (0, pad))
            hidden = hidden.reshape(batch, (length + pad) // merge, merge * width)
            mask = mask.reshape(batch, (length + pad) // merge, merge).amax(-1)
        return self.net(hidden) * mask[..., None].to(hidden.dtype)


@dataclass
class Decoder:
    transformer: SD3Transformer2DModel
    vae: AutoencoderKL
    scheduler: FlowMatchEulerDiscreteScheduler
    projector: CaptionProjector
    pooled_empty: torch.Tensor  # (1, pooled_projection_dim)

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    def to_latents(self, pixels: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] -> scaled latents. The posterior mean is used, so a sample's latent does not
        depend on random state (ranks and resumes agree)."""
        posterior = self.vae.encode(pixels.to(self.vae.dtype)).latent_dist
        return (posterior.mode() - self.vae.config.shift_factor) * self.vae.config.scaling_factor

    def to_pixels(self, latents: torch.Tensor) -> torch.Tensor:
        """Scaled latents -> images in [0, 1] (differentiable)."""
        z = latents / self.vae.config.scaling_factor + self.vae.config.shift_factor
        return (self.vae.decode(z.to(self.vae.dtype)).sample.float() / 2 + 0.5).clamp(0, 1)

    def latent_shape(self, resolution: int) -> tuple[int, int, int]:
        side = resolution // self.vae_scale_factor
        return (self.transformer.config.in_channels, side, side)

    def pooled(self, batch: int) -> torch.Tensor:
        return self.pooled_empty.expand(batch, -1)

    def pipeline(self):
        from diffusers import StableDiffusion3Pipeline

        return StableDiffusion3Pipeline(
            transformer=self.transformer,
            vae=self.vae,
            scheduler=self.scheduler,
            text_encoder=None,
            tokenizer=None,
            text_encoder_2=None,
            tokenizer_2=None,
            text_encoder_3=None,
            tokenizer_3=None,
        )

    @torch.no_grad()
    def generate(
        self,
        prompt_embeds: torch.Tensor,
        negative_embeds: torch.Tensor,
        *,
        seeds: Sequence[int],
        steps: int,
        guidance_scale: float,
        resolution: int,
    ) -> list[Image.Image]:
        """Sample with diffusers' StableDiffusion3Pipeline; one generator per image, so an image depends
        only on its own seed and caption, never on the batch it was drawn in."""
        batch = prompt_embeds.shape[0]
        device = prompt_embeds.device
        pooled = self.pooled(batch).to(device, prompt_embeds.dtype)
        generators = [torch.Generator(device="cpu").manual_seed(int(s)) for s in seeds]
        out = self.pipeline()(
            prompt_embeds=prompt_embeds,
            pooled_prompt_embeds=pooled,
            negative_prompt_embeds=negative_embeds.expand(batch, -1, -1)
            if negative_embeds.shape[0] == 1
            else negative_embeds,
            negative_pooled_prompt_embeds=pooled,
            num_inference_steps=steps,
            guidance_scale=guidance_scale,
            height=resolution,
            width=resolution,
            generator=generators,
            output_type="pil",
        )
        return out.images

    def save(self, out_dir: Path, *, metadata: dict) -> None:
        """A self-contained decoder directory."""
        out_dir = Path(out_dir)
        self.transformer.save_pretrained(out_dir / "transformer")
        self.vae.save_pretrained(out_dir / "vae")
        self.scheduler.save_pretrained(out_dir / "scheduler")
        self.projector.save_pretrained(out_dir / "projector")
        save_file(
            {"pooled_empty": self.pooled_empty.detach().cpu().contiguous()},
            out_dir / "conditioning.safetensors",
        )
        (out_dir / FORMAT_FILE).write_text(
            json.dumps({"format_version": FORMAT_VERSION, **metadata}, indent=2)
        )

    def save_adapter(self, out_dir: Path, adapted_transformer, *, base: Path, metadata: dict) -> None:
        """Only what training changed: the DiT's LoRA adapter (unmerged) and the projector; the rest
        comes from ``base`` (stored relative to ``out_dir``) when loading."""
        out_dir = Path(out_dir)
        adapted_transformer.save_pretrained(out_dir / "transformer_adapter")
        self.projector.save_pretrained(out_dir / "projector")
        relative = os.path.relpath(Path(base).resolve(), out_dir.resolve())
        (out_dir / FORMAT_FILE).write_text(
            json.dumps({"format_version": FORMAT_VERSION, "base": relative, **metadata}, indent=2)
        )


def empty_prompt_pooled(
    base_dir: Path, transformer: SD3Transformer2DModel, dtype: torch.dtype
) -> torch.Tensor:
    """SD3's pooled CLIP embedding of the empty prompt (T5 is never loaded)."""
    from diffusers import StableDiffusion3Pipeline

    pipe = StableDiffusion3Pipeline.from_pretrained(
        base_dir, transformer=transformer, vae=None, text_encoder_3=None, tokenizer_3=None, dtype=dtype
    )
    with torch.no_grad():
        _, _, pooled, _ = pipe.encode_prompt(
            prompt="", prompt_2="", prompt_3="", do_classifier_free_guidance=False
        )
    return pooled[:1].to(torch.float32)


def _sd3_parts(folder: Path, dtype: torch.dtype):
    transformer = SD3Transformer2DModel.from_pretrained(folder / "transformer", dtype=dtype)
    return (
        transformer,
        AutoencoderKL.from_pretrained(folder / "vae", dtype=dtype),
        FlowMatchEulerDiscreteScheduler.from_pretrained(folder / "scheduler"),
        empty_prompt_pooled(folder, transformer, dtype).to(dtype),
    )


def _trained_parts(folder: Path, meta: dict, dtype: torch.dtype):
    """(transformer, vae, scheduler, pooled) of a trained directory, full or adapter-only."""
    if "base" not in meta:
        return (
            SD3Transformer2DModel.from_pretrained(folder / "transformer", dtype=dtype),
            AutoencoderKL.from_pretrained(folder / "vae", dtype=dtype),
            FlowMatchEulerDiscreteScheduler.from_pretrained(folder / "scheduler"),
            load_file(folder / "conditioning.safetensors")["pooled_empty"].to(dtype),
        )
    from peft import PeftModel

    base = (folder / meta["base"]).resolve()
    if (base / FORMAT_FILE).exists():
        transformer, vae, scheduler, pooled = _trained_parts(base, _read_meta(base), dtype)
    else:
        transformer, vae, scheduler, pooled = _sd3_parts(
            require_model_dir(base, "decoder base", DIFFUSERS_FILES), dtype
        )
    adapted = PeftModel.from_pretrained(transformer, folder / "transformer_adapter").merge_and_unload()
    return adapted, vae, scheduler, pooled


def vae_folder(path) -> Path:
    """The VAE directory a decoder directory draws through: a trained one's own ``vae/``, an adapter-only
    one's base's (followed as :func:`load_decoder` follows it), an SD3 diffusers directory's ``vae/``."""
    folder = Path(path)
    while (folder / FORMAT_FILE).exists():
        meta = _read_meta(folder)
        if "base" not in meta:
            break
        folder = (folder / meta["base"]).resolve()
    return folder / "vae"


def _read_meta(folder: Path) -> dict:
    meta = json.loads((folder / FORMAT_FILE).read_text())
    if meta.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{folder}: decoder format {meta.get('format_version')} != {FORMAT_VERSION}")
    return meta


def load_decoder(
    path,
    *,
    key: str = "models.decoder.path",
    llm_hidden_size: int | None = None,
    projector_hidden_size: int | None = None,
    projector_merge: int = 1,
    projector_seed: int = 0,
    dtype: torch.dtype = torch.float32,
) -> Decoder:
    """Load a trained decoder directory (full, or LoRA adapter over its base), or start one from an SD3
    diffusers directory.

    From an SD3 directory the projector is new (fixed-seed init) and needs ``llm_hidden_size`` and
    ``projector_hidden_size`` (``projector_merge``: :class:`CaptionProjector`).
    """
    folder = Path(path) if path else None
    if folder is not None and (folder / FORMAT_FILE).exists():
        transformer, vae, scheduler, pooled = _trained_parts(folder, _read_meta(folder), dtype)
        projector = CaptionProjector.from_pretrained(folder / "projector", dtype=dtype)
        return Decoder(transformer, vae, scheduler, projector, pooled)
    folder = require_model_dir(path, key, expect=DIFFUSERS_FILES)
    if llm_hidden_size is None or projector_hidden_size is None:
        raise ValueError("starting from an SD3 directory needs llm_hidden_size and projector_hidden_size")
    transformer, vae, scheduler, pooled = _sd3_parts(folder, dtype)
    torch.manual_seed(projector_seed)
    projector = CaptionProjector(
        in_features=llm_hidden_size,
        hidden_features=projector_hidden_size,
        out_features=transformer.config.joint_attention_dim,
        merge=projector_merge,
    )
    if dtype != torch.float32:
        projector = projector.to(dtype)
    return Decoder(transformer, vae, scheduler, projector, pooled)


def export_decoder(
    decoder: Decoder,
    transformer: torch.nn.Module,
    out_dir: Path,
    *,
    lora: bool,
    final: bool,
    start: Path,
    metadata: dict,
) -> None:
    """Save a trained decoder. A LoRA checkpoint keeps the adapter unmerged over ``start`` (the directory
    training began from); the final export merges it into a self-contained directory."""
    from workflow_scripts.train.lora import merged

    if lora and not final:
        decoder.save_adapter(out_dir, transformer, base=start, metadata=metadata)
        return
    decoder.transformer = merged(transformer)
    decoder.save(out_dir, metadata=metadata)

"""Model configuration: where the encoder and decoder come from, and the tiny preset's shapes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from workflow_scripts.config.typed import doc

BACKBONES = ("clip", "longclip", "dinov2", "dinov3")
LIBRARY = {"clip": "open_clip", "longclip": "open_clip", "dinov2": "timm", "dinov3": "timm"}


@dataclass(frozen=True, kw_only=True, slots=True)
class TinyBackboneSpec:
    """A small ViT of the backbone's own library class, random weights (tiny preset)."""

    architecture: str = doc("timm architecture name (DINO) or 'ViT' (open_clip CLIP).")
    image_size: int = doc("Input side in pixels.")
    patch_size: int = doc("Patch size (timm DINO architectures fix their own).")
    width: int = doc("Transformer width.")
    layers: int = doc("Transformer blocks.")
    heads: int = doc("Attention heads.")
    embed_dim: int = doc("CLIP joint embedding width (ignored for DINO).")
    context_length: int = doc("CLIP text positions (LongCLIP: 248; ignored for DINO).")


@dataclass(frozen=True, kw_only=True, slots=True)
class BackboneConfig:
    path: str | None = doc(
        "Local directory loadable with the library's 'local-dir:' schema: open_clip (open_clip_config.json "
        "+ weights) for CLIP/LongCLIP, timm (config.json + model.safetensors) for DINOv2/DINOv3."
    )
    tiny: TinyBackboneSpec | None = doc("Shape built when models.source is 'tiny'.")


@dataclass(frozen=True, kw_only=True, slots=True)
class RewardModelsConfig:
    clip: BackboneConfig = doc("CLIP image encoder (paper: ViT-L/14, OpenAI weights).")
    longclip: BackboneConfig = doc("LongCLIP (a CLIP with 248 text positions; paper: LongCLIP-L).")
    dinov2: BackboneConfig = doc("DINOv2 (paper: ViT-L/14).")
    dinov3: BackboneConfig = doc("DINOv3 (Unified-Bench only; paper: ViT-L/16).")


@dataclass(frozen=True, kw_only=True, slots=True)
class TinyEncoderSpec:
    """Shapes of the tiny Qwen2.5-VL built with random weights (tiny preset)."""

    vocab_size: int = doc("Byte-level BPE vocabulary size, trained on the tiny caption corpus.")
    hidden_size: int = doc("LLM hidden size.")
    intermediate_size: int = doc("LLM MLP width.")
    num_layers: int = doc("LLM decoder layers.")
    num_heads: int = doc("LLM attention heads.")
    num_kv_heads: int = doc("LLM key/value heads (GQA).")
    vision_depth: int = doc("Vision transformer blocks.")
    vision_hidden_size: int = doc("Vision transformer width.")
    vision_heads: int = doc("Vision transformer heads.")
    patch_size: int = doc("Vision patch size in pixels (Qwen2.5-VL: 14).")

    def __post_init__(self) -> None:
        head_dim = self.hidden_size // self.num_heads
        if head_dim % 8:
            raise ValueError(f"hidden_size/num_heads = {head_dim} must be a multiple of 8 (multimodal RoPE)")
        if self.num_heads % self.num_kv_heads:
            raise ValueError("num_heads must be a multiple of num_kv_heads")


@dataclass(frozen=True, kw_only=True, slots=True)
class TinyDecoderSpec:
    """Shapes of the tiny SD3 MMDiT, VAE and CLIP text encoders (tiny preset)."""

    num_layers: int = doc("MMDiT joint blocks.")
    num_heads: int = doc("MMDiT attention heads.")
    head_dim: int = doc("MMDiT head dimension.")
    joint_attention_dim: int = doc("Width of the DiT's text stream input (SD3.5-large: 4096).")
    patch_size: int = doc("DiT patch size on the latent grid (SD3: 2).")
    latent_channels: int = doc("VAE latent channels (SD3: 16).")
    vae_channels: list[int] = doc("VAE block widths; the VAE downsamples by 2**(len-1).")
    clip_hidden_size: int = doc("Width of each tiny CLIP text encoder (pooled prompt embedding only).")
    clip_projection_dim: int = doc("Projection width of each tiny CLIP text encoder.")
    max_latent_size: int = doc("Largest latent side the positional embedding covers.")
    scheduler_shift: float = doc(
        "Flow-matching timestep shift of the scheduler (SD3.5: 3.0, for 128x128 latents; SD3 shifts more "
        "noise onto larger latent grids, so an 8x8 one takes less: tiny 1.0, no shift)."
    )


@dataclass(frozen=True, kw_only=True, slots=True)
class EncoderModelConfig:
    path: str | None = doc(
        "Local directory of a Qwen2.5-VL instruct model (paper: Qwen2.5-VL-3B-Instruct). "
        "Used when models.source is 'local'."
    )
    tiny: TinyEncoderSpec | None = doc("Shapes built when models.source is 'tiny'.")


@dataclass(frozen=True, kw_only=True, slots=True)
class DecoderModelConfig:
    path: str | None = doc(
        "Local diffusers directory of Stable Diffusion 3.5 Large (transformer, vae, scheduler, "
        "text_encoder, text_encoder_2). Used when models.source is 'local'."
    )
    projector_hidden_size: int = doc(
        "Hidden width of the LLM->DiT projector MLP (authors' release: 2048 -> 8192 -> GELU -> 4096)."
    )
    projector_merge: int = doc(
        "Consecutive LLM states the projector concatenates into one DiT text token (as Qwen2.5-VL's "
        "patch merger merges 2x2 patches). Release: 1, every position is a token. The DiT's cost is "
        "mostly its text tokens when captions are long and images small (tiny preset)."
    )
    conditioning: Literal["release", "fixed_length"] = doc(
        "How a prompt becomes the DiT's prompt_embeds (models/conditioning.py). 'release' (the authors' "
        "inference code): the turn ends with the assistant header (add_generation_prompt), prompts and the "
        "negative prompt are right-padded together to the longest of them, padded positions are kept (not "
        "zeroed), so an image depends on the lengths of the other prompts in its batch; a batch of one "
        "prompt is exactly the release. 'fixed_length': no generation header, every prompt padded or "
        "truncated to max_text_tokens and padded positions zeroed, so conditioning never depends on the "
        "batch."
    )
    max_text_tokens: int = doc(
        "'fixed_length' conditioning: prompts are padded/truncated to this many tokens. Also the caption "
        "length limit where training stages caption images themselves."
    )
    conditioning_role: str = doc("Chat role of the caption turn read by the LLM (authors: 'generate').")
    negative_prompt: str = doc(
        "Negative prompt for classifier-free guidance, read through the LLM like a prompt by every stage "
        "that samples the decoder (release: 'Generate a random, low quality, ugly, blur, bad and anime, "
        "cartoon image.')."
    )
    tiny: TinyDecoderSpec | None = doc("Shapes built when models.source is 'tiny'.")


@dataclass(frozen=True, kw_only=True, slots=True)
class ModelsConfig:
    source: Literal["tiny", "local"] = doc(
        "'tiny': build every component from the tiny specs with fixed-seed random weights and save it; "
        "'local': load the published models from the configured paths. Later stages always load with "
        "from_pretrained(local_dir) either way."
    )
    encoder: EncoderModelConfig = doc("Encoder (image -> long caption).")
    decoder: DecoderModelConfig = doc("Decoder (long caption -> image).")
    reward: RewardModelsConfig = doc(
        "Image-feature backbones of the reconstruction reward and Unified-Bench."
    )
    dtype: Literal["float32", "bfloat16"] = doc(
        "Weights of models that are not trained (and of LoRA bases) on GPUs; CPUs always use float32."
    )

    def torch_dtype(self, device):
        import torch

        return torch.bfloat16 if device.type == "cuda" and self.dtype == "bfloat16" else torch.float32

    def __post_init__(self) -> None:
        parts = {"encoder": self.encoder, "decoder": self.decoder}
        parts.update(
            {f"reward.{n}": getattr(self.reward, n) for n in ("clip", "longclip", "dinov2", "dinov3")}
        )
        for name, part in parts.items():
            if self.source == "tiny" and part.tiny is None:
                raise ValueError(f"models.source is 'tiny' but models.{name}.tiny is null")
            if self.source == "local" and not part.path:
                # the hint nests 'reward.clip' as the loader reads it: {reward: {clip: {path: ...}}}
                nested = "{path: /models/...}"
                for part in reversed(name.split(".")):
                    nested = f"{{{part}: {nested}}}"
                raise ValueError(
                    f"models.source is 'local' but models.{name}.path is not set: point it at the "
                    f'local model directory, e.g. --config models="{nested}", or set every path in a '
                    "copy of paper.example.yaml and pass it with --configfile"
                )

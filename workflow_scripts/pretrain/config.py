"""Stage 1 (pretraining) configuration: encoder SFT and the decoder's resolution phases."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from workflow_scripts.config.typed import doc
from workflow_scripts.train.config import LoopConfig, LoraConfig


@dataclass(frozen=True, kw_only=True, slots=True)
class EncoderSFTConfig:
    """Fine-tune Qwen2.5-VL to write the long captions (loss on caption tokens only)."""

    method: Literal["lora", "full"] = doc("LoRA adapters on the LLM, or full fine-tuning of the LLM.")
    lora: LoraConfig = doc("Adapter settings when method is 'lora' (merged into the exported model).")
    train_vision_tower: bool = doc("Also train the vision transformer (full method only).")
    resolution: int = doc("Which shard resolution the encoder reads (one of data.resolutions).")
    max_caption_tokens: int = doc("Caption tokens kept for the loss (longer captions are truncated).")
    loop: LoopConfig = doc("Steps, batch, optimiser, checkpoints.")


@dataclass(frozen=True, kw_only=True, slots=True)
class DecoderPhaseConfig:
    name: str = doc("Phase name; also its Snakemake target (pretrain_decoder_<name>).")
    resolution: int = doc("Image side in pixels (paper: 512 then 1024).")
    loop: LoopConfig = doc("Steps, batch, optimiser, checkpoints of this phase.")


@dataclass(frozen=True, kw_only=True, slots=True)
class DecoderPretrainConfig:
    """Flow-matching fine-tune of the projector and the MMDiT on (long caption, image) pairs."""

    transformer: Literal["full", "lora"] = doc(
        "Train the whole DiT or LoRA adapters on it (projector: always)."
    )
    lora: LoraConfig = doc("DiT adapter settings when transformer is 'lora'.")
    caption_dropout: float = doc("Probability a caption is replaced by the empty one (enables CFG).")
    weighting_scheme: Literal["logit_normal", "uniform"] = doc(
        "Timestep density (diffusers training_utils; SD3 default: logit_normal)."
    )
    logit_mean: float = doc("Mean of the logit-normal timestep density.")
    logit_std: float = doc("Std of the logit-normal timestep density.")
    phases: list[DecoderPhaseConfig] = doc(
        "Resolution schedule; each phase starts from the previous phase's weights."
    )
    previews: int = doc("Validation captions drawn with the trained decoder at the end of each phase.")
    cache: bool = doc(
        "Encode every training image with the frozen VAE and read every caption with the frozen LLM once "
        "per phase, then train on the stored tensors (the same numbers as re-encoding each step: both "
        "models are frozen). Needs models.decoder.conditioning 'fixed_length' (in 'release' a caption's "
        "reading depends on the captions padded beside it). Memory: images x latent + captions x "
        "caption tokens x LLM width (paper, off: 700K x 512 x 2048 would not fit)."
    )
    ema_decay: float = doc(
        "Exponential moving average of the trained weights, exported instead of the last step's "
        "(diffusers' EMAModel: decay min(ema_decay, (1 + n) / (10 + n)) at update n). 0 = off (paper: "
        "neither the paper nor the release mentions an EMA). ddp engine only."
    )

    def __post_init__(self) -> None:
        names = [p.name for p in self.phases]
        if not names:
            raise ValueError("pretrain.decoder.phases is empty")
        if len(set(names)) != len(names):
            raise ValueError(f"pretrain.decoder.phases names repeat: {names}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(
                f"pretrain.decoder.ema_decay = {self.ema_decay}: use 0 (off) or a value in (0, 1)"
            )
        if self.ema_decay > 0:
            sharded = [p.name for p in self.phases if p.loop.distributed != "ddp"]
            if sharded:
                raise ValueError(
                    f"pretrain.decoder.ema_decay needs the ddp engine (the average is kept beside whole "
                    f"weights); phases {sharded} use another loop.distributed: set ema_decay: 0 or "
                    "distributed: ddp"
                )


@dataclass(frozen=True, kw_only=True, slots=True)
class PretrainConfig:
    encoder: EncoderSFTConfig = doc("Encoder supervised fine-tuning.")
    decoder: DecoderPretrainConfig = doc("Decoder flow-matching pretraining.")

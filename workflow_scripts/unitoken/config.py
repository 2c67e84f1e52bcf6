"""UniToken recipe configuration: models, VQ tokenizer, pre-tokenisation, the three stages, sampling."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from workflow_scripts.config.typed import doc
from workflow_scripts.train.config import LoopConfig

TASKS = ("caption", "generate", "conversation")


@dataclass(frozen=True, kw_only=True, slots=True)
class TinyLMSpec:
    """Shapes of the tiny Chameleon LM (and its VQ-VAE) built with random weights (tiny preset)."""

    text_vocab_size: int = doc("Byte-level BPE vocabulary (before the image-code tokens are appended).")
    hidden_size: int = doc("LM hidden size.")
    intermediate_size: int = doc("LM MLP width.")
    num_layers: int = doc("LM decoder layers.")
    num_heads: int = doc("LM attention heads.")
    max_positions: int = doc("Longest sequence the LM's rotary embedding is configured for.")


@dataclass(frozen=True, kw_only=True, slots=True)
class TinyVisionSpec:
    """Shapes of the tiny SigLIP vision tower (tiny preset)."""

    image_size: int = doc("Input side in pixels.")
    patch_size: int = doc("Patch side; (image_size / patch_size)^2 continuous positions per image.")
    hidden_size: int = doc("Width.")
    num_layers: int = doc("Transformer blocks.")
    num_heads: int = doc("Attention heads.")


@dataclass(frozen=True, kw_only=True, slots=True)
class TinyVQSpec:
    """Shapes of the tiny VQ tokenizer (Chameleon's VQGAN layout: 512 px, ch 128, ch_mult 1,1,2,2,4)."""

    resolution: int = doc("Image side the tokenizer reads and draws; one of data.resolutions.")
    base_channels: int = doc("Width of the first level (a multiple of 32: GroupNorm with 32 groups).")
    channel_multiplier: list[int] = doc("Width multipliers; downsamples by 2**(len-1).")
    num_res_blocks: int = doc("Residual blocks per level (decoder: one more).")
    codebook_size: int = doc("Codebook entries (Chameleon: 8192).")
    embed_dim: int = doc("Codebook vector width (Chameleon: 256).")
    latent_channels: int = doc("Encoder output channels (Chameleon: 256).")


@dataclass(frozen=True, kw_only=True, slots=True)
class UniTokenModelsConfig:
    lm: str | None = doc(
        "Local directory of a Chameleon-architecture LM with image-code vocabulary and VQ encoder "
        "(paper: Lumina-mGPT-7B-512 converted to transformers' ChameleonForConditionalGeneration)."
    )
    vision: str | None = doc("Local directory of a SigLIP model (paper: siglip-so400m-patch14-384).")
    vq: str | None = doc(
        "Tokenizer directory with the pixel decoder (paper: the released Chameleon tokenizer converted "
        "with `python -m workflow_scripts.unitoken.vq vqgan.ckpt vqgan.yaml <dir>`)."
    )
    tiny_lm: TinyLMSpec | None = doc("Tiny Chameleon LM shapes (models.source: tiny).")
    tiny_vision: TinyVisionSpec | None = doc("Tiny SigLIP shapes (models.source: tiny).")
    tiny_vq: TinyVQSpec | None = doc("Tiny VQ tokenizer shapes; trained by the unitoken_vq rule.")


@dataclass(frozen=True, kw_only=True, slots=True)
class VQTrainConfig:
    """Training of the tiny VQ tokenizer on the data stage's images (tiny preset only)."""

    commitment: float = doc("Weight of the quantizer's codebook + commitment loss (beta 0.25 inside).")
    loop: LoopConfig = doc("Steps, batch, optimiser, checkpoints.")


@dataclass(frozen=True, kw_only=True, slots=True)
class PretokenizeConfig:
    longcap: bool = doc(
        "Turn the data stage's (image, long caption) pairs into caption and generate records."
    )
    conversations: list[str] = doc(
        "Conversation files in the released JSON format: a list of {conversations: [{from, value}], "
        "image: [paths]} with <|image|> placeholders; image paths relative to the file."
    )
    shards: int = doc("Token-file shards, written by a job array (one element per shard).")
    max_length: int = doc("Records longer than this many tokens are rejected (released: 4096).")
    caption_instruction: str = doc("Human turn of a caption record (after the image).")
    generate_instruction: str = doc("Human turn of a generate record, before the caption.")


@dataclass(frozen=True, kw_only=True, slots=True)
class UniTokenStageConfig:
    name: str = doc("Stage name: align, joint or instruct; its Snakemake target is unitoken_train_<name>.")
    trainable: Literal["vision_adapter", "all"] = doc(
        "align: the SigLIP tower and the adapter only; joint/instruct: everything."
    )
    vision_lr_scale: float = doc("SigLIP's learning rate = loop.optim.lr x this (released align: 0.01).")
    tasks: list[str] = doc("Record kinds this stage trains on (caption, generate, conversation).")
    loop: LoopConfig = doc("Steps, batch, optimiser, checkpoints.")

    def __post_init__(self) -> None:
        unknown = set(self.tasks) - set(TASKS)
        if unknown or not self.tasks:
            raise ValueError(f"unitoken stage '{self.name}' tasks {sorted(unknown)}: choose from {TASKS}")


@dataclass(frozen=True, kw_only=True, slots=True)
class UniTokenSamplingConfig:
    cfg_scale: float = doc("Classifier-free guidance on image-code logits (released: 3.0).")
    image_top_k: int = doc("Top-k over image codes (released: 4000).")
    image_temperature: float = doc("Temperature of image-code sampling (released: 1.0).")
    max_caption_tokens: int = doc("Longest caption the model writes.")


@dataclass(frozen=True, kw_only=True, slots=True)
class UniTokenConfig:
    """The second recipe: one Chameleon LM reading each image as VQ codes and SigLIP features."""

    enabled: bool = doc("Train and evaluate UniToken beside UAE (system name 'unitoken').")
    models: UniTokenModelsConfig = doc("LM, vision tower and VQ tokenizer.")
    vq_train: VQTrainConfig = doc("Tiny VQ tokenizer training.")
    pretokenize: PretokenizeConfig = doc("Conversations + images -> token-id shards.")
    z_loss: float = doc("Weight of the z-loss, mean logsumexp(logits)^2 on supervised positions (1e-5).")
    stages: list[UniTokenStageConfig] = doc("Training stages in order; each starts from the previous.")
    sampling: UniTokenSamplingConfig = doc("Generation settings.")

    def __post_init__(self) -> None:
        names = [s.name for s in self.stages]
        if self.enabled and not names:
            raise ValueError("unitoken.stages is empty")
        if len(set(names)) != len(names):
            raise ValueError(f"unitoken.stages names repeat: {names}")

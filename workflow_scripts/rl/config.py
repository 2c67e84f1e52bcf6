"""Unified-GRPO configuration: RL data, rewards, cold start, Stage 2a (encoder) and 2b (decoder)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from workflow_scripts.config.typed import doc
from workflow_scripts.data.config import RLDataConfig
from workflow_scripts.models.config import BACKBONES
from workflow_scripts.reward.config import RewardsConfig
from workflow_scripts.train.config import LoopConfig, LoraConfig

VARIANTS = ("none", "coldstart", "2a", "2b", "2a+2b")
Variant = Literal["none", "coldstart", "2a", "2b", "2a+2b"]


@dataclass(frozen=True, kw_only=True, slots=True)
class GRPOConfig:
    """Group-relative policy optimisation (DeepSeekMath; TRL's GRPOTrainer; Flow-GRPO for 2b)."""

    group_size: int = doc("G: samples per input (captions per image in 2a, images per caption in 2b).")
    inner_iterations: int = doc("mu: optimiser steps on each rollout (rho = 1 on the first).")
    clip_epsilon: float = doc("Clip range of rho (TRL: 0.2; Flow-GRPO: 1e-4 on per-step averaged log-probs).")
    beta: float = doc("KL weight to the reference (adapter-disabled) policy (UAE: 0.01).")
    advantage_epsilon: float = doc("A = (r - mean) / (std + epsilon) (TRL: 1e-4).")
    std: Literal["sample", "population"] = doc(
        "Std of the advantage normaliser: 'sample' divides by n-1 (TRL), 'population' by n "
        "(flow_grpo's np.std)."
    )
    scale: Literal["group", "batch", "none"] = doc(
        "Divide by the group's std, the whole batch's std (flow_grpo global_std), or not at all."
    )
    sample_every: int = doc("Write (image, caption, output) triples every this many steps.")
    sample_count: int = doc("Images per written sample set.")

    def __post_init__(self) -> None:
        if self.group_size < 2:
            raise ValueError("group_size must be >= 2 (advantages are relative within a group)")
        if self.inner_iterations < 1:
            raise ValueError("inner_iterations must be >= 1")


def _check_cycles(loop: LoopConfig, grpo: GRPOConfig) -> None:
    mu = grpo.inner_iterations
    if loop.steps % mu or loop.checkpoint.every_steps % mu:
        raise ValueError(
            f"loop.steps ({loop.steps}) and loop.checkpoint.every_steps ({loop.checkpoint.every_steps}) "
            f"must be multiples of grpo.inner_iterations ({mu}): checkpoints must fall between rollouts "
            "for a resume to be exact"
        )


@dataclass(frozen=True, kw_only=True, slots=True)
class RLTaskConfig:
    """What every RL stage sets: its trained adapter, the side of the images it draws, guidance, its loop."""

    lora: LoraConfig = doc(
        "The trained adapter: on the DiT (cold start, where the projector also trains fully; 2b) or on the "
        "encoder's LLM (2a; release: r 32, alpha 64, all linear, gaussian)."
    )
    resolution: int = doc("Side in pixels of the images drawn (reconstructions, rollouts).")
    guidance_scale: float = doc("Classifier-free guidance while drawing (Flow-GRPO, 2b: 4.5).")
    loop: LoopConfig = doc(
        "Steps, batch, optimiser, checkpoints; batch_size / micro_batch_size count images (cold start; 2a: "
        "each with G captions) or captions (2b: each with G images)."
    )


@dataclass(frozen=True, kw_only=True, slots=True)
class GRPOTaskConfig(RLTaskConfig):
    """An RL stage trained by GRPO (2a, 2b): rollouts every ``grpo.inner_iterations`` steps."""

    grpo: GRPOConfig = doc("GRPO settings (2b: per denoising step).")

    def __post_init__(self) -> None:
        _check_cycles(self.loop, self.grpo)


ColdStartMode = Literal["hidden_states", "caption_text"]
COLDSTART_MODES = ("hidden_states", "caption_text")


@dataclass(frozen=True, kw_only=True, slots=True)
class ColdStartConfig(RLTaskConfig):
    """Unified-GRPO step 1: a differentiable semantic reconstruction loss (1 - R), backpropagated through
    the last denoising steps (DRaFT-K), initialises the decoder (and, in hidden_states mode, the encoder)."""

    enabled: bool = doc("Run the cold start; if false, RL starts from the pretrained models.")
    mode: ColdStartMode = doc(
        "'hidden_states' (release, modeling_longcontext.py): the encoder's LLM reads image + instruction + "
        "caption answer (teacher-forced) and the projected last hidden states of the answer tokens condition "
        "the DiT; the loss trains the LLM's LoRA (encoder_lora), the projector and the DiT's LoRA together, "
        "and the stage exports an encoder and a decoder. 'caption_text': the caption is re-read as a text "
        "turn by the frozen pretrained LLM; only the projector and the DiT's LoRA train."
    )
    encoder_lora: LoraConfig = doc(
        "hidden_states mode: the LoRA on the encoder's LLM (release: r 32, alpha 64, all linear, gaussian)."
    )
    caption_source: Literal["dataset", "sampled"] = doc(
        "The caption answer of each image: 'dataset' (the RL split's caption, the release's training "
        "sample) or 'sampled' (the encoder's own caption at caption_temperature, fixed per image)."
    )
    alphas: dict[str, float] = doc(
        "Loss = 1 - sum_k alpha_k cos(f_k(x), f_k(x')) over these reward backbones (release: the CLIP "
        "ViT-L/14 image-image score alone, {clip: 1.0})."
    )
    sample_steps: int = doc("Euler steps from noise to image.")
    grad_steps: int = doc("Gradients flow through only the last K steps (DRaFT-K), bounding memory.")
    caption_temperature: float = doc("Temperature of the encoder's caption of each image (fixed per image).")

    def __post_init__(self) -> None:
        if not 1 <= self.grad_steps <= self.sample_steps:
            raise ValueError("need 1 <= grad_steps <= sample_steps")
        unknown = set(self.alphas) - set(BACKBONES)
        if unknown or not self.alphas:
            raise ValueError(f"alphas must weight some of {list(BACKBONES)}, got {sorted(self.alphas)}")

    @property
    def trains_encoder(self) -> bool:
        """Whether the cold start exports an encoder too (its directory then holds both models)."""
        return self.enabled and self.mode == "hidden_states"


@dataclass(frozen=True, kw_only=True, slots=True)
class EncoderRLConfig(GRPOTaskConfig):
    """Stage 2a, generation for understanding: GRPO on the encoder's LoRA, reward = reconstruction."""

    temperature: float = doc("Caption sampling temperature.")
    max_new_tokens: int = doc("Caption length limit in tokens.")
    loss_aggregation: Literal["grpo", "bnpo", "dapo"] = doc(
        "'grpo': mean over a caption's tokens, then over captions; 'bnpo': sum / local token count; 'dapo': "
        "sum / (global token count / processes)."
    )
    reconstruction_steps: int = doc("Denoising steps of each reconstruction.")


@dataclass(frozen=True, kw_only=True, slots=True)
class DecoderRLConfig(GRPOTaskConfig):
    """Stage 2b, understanding for generation: Flow-GRPO on the DiT's LoRA, reward = reconstruction."""

    train_steps: int = doc("Denoising steps of training rollouts (Flow-GRPO: 10; evaluation uses more).")
    train_timestep_fraction: float = doc(
        "Train on the first fraction of the rollout's steps (Flow-GRPO: 0.99)."
    )
    noise_level: float = doc("a in the SDE noise std a*sqrt(sigma/(1-sigma)) (Flow-GRPO: 0.7).")
    advantage_clip: float = doc("Advantages are clipped to +-this (Flow-GRPO: 5).")
    caption_temperature: float = doc("Temperature of the frozen encoder's one caption per image.")
    caption_batch_size: int = doc(
        "Images per generate() call when the frozen encoder captions the run's images, once, before the "
        "first rollout (each caption keeps its own seed, so the batch size never changes a caption)."
    )

    def __post_init__(self) -> None:
        GRPOTaskConfig.__post_init__(self)  # (a slotted dataclass has no zero-argument super())
        if not 0 < self.train_timestep_fraction <= 1:
            raise ValueError("train_timestep_fraction must be in (0, 1]")
        if self.caption_batch_size < 1:
            raise ValueError("caption_batch_size must be >= 1")


@dataclass(frozen=True, kw_only=True, slots=True)
class RLConfig:
    data: RLDataConfig = doc("The curated RL split.")
    rewards: RewardsConfig = doc("Reward functions and weights (both stages).")
    coldstart: ColdStartConfig = doc("Unified-GRPO step 1.")
    encoder: EncoderRLConfig = doc("Stage 2a.")
    decoder: DecoderRLConfig = doc("Stage 2b.")
    reader: Literal["captioner", "pretrained"] = doc(
        "The LLM through which a system's decoder reads its prompts and captions. 'captioner' (release: one "
        "LoRA-adapted LLM captions and conditions): the system's captioner, adapter included; Stage 2a's "
        "rollouts condition the frozen decoder through the policy's LLM. 'pretrained' (ablation): the "
        "frozen encoder RL starts from (the pretrained encoder, or the cold start's in hidden_states mode), "
        "so 2a changes only the caption text."
    )
    variants: list[Variant] = doc(
        "Ablation variants to build: 'none' (pretrained pair), 'coldstart' (cold start, no RL), '2a', '2b', "
        "'2a+2b' (2b on the 2a encoder, the paper's order). RL variants start from the cold start when it "
        "is enabled."
    )

"""Prompts -> the DiT's ``prompt_embeds``: the one place every stage turns text into decoder conditioning.

A *reader* (a Qwen2.5-VL :class:`~workflow_scripts.models.encoder.Encoder`, possibly LoRA-adapted) reads
the prompts; its last hidden states pass the decoder's projector. Two modes (``models.decoder.conditioning``):

``release``
    The authors' inference code: one turn of ``role`` with the generation header
    (``add_generation_prompt=True``), encoded with ``tokenizer.encode``; the negative prompt and the
    prompts are right-padded *together* with ``pad_token_id`` to the longest of them
    (``attention_mask = ids != pad``) and read in one forward; ``hidden_states[-1]`` of every position,
    padding included, is projected (SD3's joint attention sees the padded positions). The release reads
    one prompt with its negative; a batch of B prompts is read as B + 1 rows padded to the longest, so a
    prompt's conditioning depends on the longest prompt it is batched with. A batch of one prompt (or of
    copies of one prompt) is exactly the release.
``fixed_length``
    Every prompt (no generation header) padded or truncated to ``max_tokens``, padded positions zeroed
    before and after the projector: a prompt's conditioning never depends on its batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch

Mode = Literal["release", "fixed_length"]
MODES: tuple[str, ...] = ("release", "fixed_length")


@dataclass(frozen=True)
class ConditioningSpec:
    mode: Mode
    role: str  # chat role of the prompt turn (release: "generate")
    negative: str  # negative prompt of classifier-free guidance
    max_tokens: int  # 'fixed_length' width

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"conditioning mode {self.mode!r} is not one of {', '.join(MODES)}")

    @classmethod
    def of(cls, decoder_cfg) -> ConditioningSpec:
        """The spec ``models.decoder`` (a DecoderModelConfig) configures."""
        return cls(
            mode=decoder_cfg.conditioning,
            role=decoder_cfg.conditioning_role,
            negative=decoder_cfg.negative_prompt,
            max_tokens=decoder_cfg.max_text_tokens,
        )

    def record(self) -> dict:
        """How a system was conditioned, for the ``protocol`` mapping of its records."""
        return {"mode": self.mode, "role": self.role, "negative_prompt": self.negative}


@dataclass
class Reading:
    """LLM states of a batch of prompts, before the projector.

    ``keep`` marks the positions the projector output keeps (all ones in 'release': nothing is zeroed);
    ``negative_*`` is one row (batch 1) of the same length, or None when no negative was read.
    """

    hidden: torch.Tensor  # (B, L, H)
    keep: torch.Tensor  # (B, L)
    negative_hidden: torch.Tensor | None  # (1, L, H)
    negative_keep: torch.Tensor | None  # (1, L)


def turn_text(reader, prompt: str, spec: ConditioningSpec) -> str:
    """The chat text of one prompt turn, as the mode formats it."""
    messages = [{"role": spec.role, "content": [{"type": "text", "text": prompt}]}]
    if spec.mode == "release":
        return reader.processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return reader.processor.apply_chat_template(messages)


def token_ids(reader, prompts: Sequence[str], spec: ConditioningSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask) of the prompts, padded as the mode pads them."""
    tokenizer = reader.tokenizer
    texts = [turn_text(reader, p, spec) for p in prompts]
    if spec.mode == "release":
        rows = [torch.tensor(tokenizer.encode(t), dtype=torch.long) for t in texts]
        ids = torch.nn.utils.rnn.pad_sequence(rows, batch_first=True, padding_value=tokenizer.pad_token_id)
        return ids, ids.ne(tokenizer.pad_token_id).long()
    tokenizer.padding_side = "right"
    tokens = tokenizer(
        texts,
        add_special_tokens=False,
        padding="max_length",
        truncation=True,
        max_length=spec.max_tokens,
        return_tensors="pt",
    )
    return tokens["input_ids"], tokens["attention_mask"]


def _last_states(reader, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``hidden_states[-1]`` (the final norm's output, as transformers returns it) of every position.

    Text only, so multimodal RoPE reduces to positions from the attention mask, as in the full model.
    """
    device = next(reader.model.parameters()).device
    out = _backbone(reader.model)(
        input_ids=ids.to(device), attention_mask=mask.to(device), output_hidden_states=True
    )
    return out.hidden_states[-1]


def read(reader, prompts: Sequence[str], spec: ConditioningSpec, *, negative: str | None = None) -> Reading:
    """The reader's states of ``prompts`` (and of ``negative`` when given), no projector.

    Gradients flow when the caller enables them (training stages decide with ``torch.no_grad``).
    """
    if spec.mode == "release":
        texts = [negative, *prompts] if negative is not None else list(prompts)
        ids, mask = token_ids(reader, texts, spec)
        hidden = _last_states(reader, ids, mask)
        keep = torch.ones(hidden.shape[:2], dtype=torch.long, device=hidden.device)
        if negative is None:
            return Reading(hidden, keep, None, None)
        return Reading(hidden[1:], keep[1:], hidden[:1], keep[:1])
    hidden, keep = _fixed_states(reader, prompts, spec)
    if negative is None:
        return Reading(hidden, keep, None, None)
    negative_hidden, negative_keep = _fixed_states(reader, [negative], spec)
    return Reading(hidden, keep, negative_hidden, negative_keep)


def _fixed_states(reader, prompts: Sequence[str], spec: ConditioningSpec):
    if not prompts:  # e.g. only the negative is wanted
        weight = next(reader.model.parameters())
        width = reader.model.config.text_config.hidden_size
        hidden = torch.zeros(0, spec.max_tokens, width, dtype=weight.dtype, device=weight.device)
        return hidden, torch.zeros(0, spec.max_tokens, dtype=torch.long, device=weight.device)
    ids, mask = token_ids(reader, prompts, spec)
    hidden = _last_states(reader, ids, mask)
    mask = mask.to(hidden.device)
    # SD3's joint attention takes no text mask: zeros are the closest to "absent"
    return hidden * mask[..., None].to(hidden.dtype), mask


def project(projector, hidden: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    return projector(hidden.to(projector.dtype), keep)


def condition(
    reader, projector, prompts: Sequence[str], spec: ConditioningSpec, *, negative: str | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(prompt_embeds (B, L, D), negative_embeds (1, L, D)) of ``prompts`` and the negative prompt
    (``spec.negative`` unless ``negative`` is given)."""
    reading = read(reader, prompts, spec, negative=spec.negative if negative is None else negative)
    return (
        project(projector, reading.hidden, reading.keep),
        project(projector, reading.negative_hidden, reading.negative_keep),
    )


def _backbone(model: torch.nn.Module) -> torch.nn.Module:
    """Qwen2_5_VLModel under a (possibly peft-wrapped) Qwen2_5_VLForConditionalGeneration."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    # a release checkpoint's inner model is itself peft-wrapped (models/release.py); calling it runs the LoRA
    return base.model

"""Autoregressive sampling for UniToken: captions (text tokens) and images (VQ codes, with CFG + top-k).

One loop serves both: each step's logits are restricted to an allowed token set before anything else,
so an image span can only ever contain image codes and a caption never contains one.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from workflow_scripts.unitoken.model import UniToken


@dataclass(frozen=True)
class Sampling:
    steps: int
    temperature: float = 1.0  # 0: greedy
    top_k: int = 0  # 0: off
    cfg_scale: float = 1.0  # 1: no guidance
    stop_token: int | None = None


class _Stream:
    """One sequence decoded with a KV cache."""

    def __init__(self, model: UniToken, ids: list[int], pixel_values: torch.Tensor | None, device):
        self.model, self.cache = model, None
        input_ids = torch.tensor([ids], device=device)
        self.logits = self._step(model.embed(input_ids, pixel_values))

    def _step(self, embeds: torch.Tensor) -> torch.Tensor:
        out = self.model.lm.model(inputs_embeds=embeds, cache=self.cache, use_cache=True)
        self.cache = out.cache
        return self.model.lm.lm_head(out.last_hidden_state[:, -1]).float()[0]

    def feed(self, token: int) -> None:
        embeds = self.model.lm.get_input_embeddings()(torch.tensor([[token]], device=self.cache_device))
        self.logits = self._step(embeds)

    @property
    def cache_device(self):
        return self.model.lm.lm_head.weight.device


def restrict(logits: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    return logits.masked_fill(~allowed, float("-inf"))


def guide(conditional: torch.Tensor, unconditional: torch.Tensor, scale: float) -> torch.Tensor:
    """Classifier-free guidance on logits: uncond + scale * (cond - uncond)."""
    return unconditional + scale * (conditional - unconditional)


def pick(logits: torch.Tensor, sampling: Sampling, generator: torch.Generator) -> int:
    if sampling.temperature == 0:
        return int(logits.argmax())
    logits = logits / sampling.temperature
    if sampling.top_k and sampling.top_k < logits.numel():
        kth = torch.topk(logits, sampling.top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    return int(torch.multinomial(probs.cpu(), 1, generator=generator))


@torch.no_grad()
def sample(
    model: UniToken,
    prompt: list[int],
    allowed: torch.Tensor,
    sampling: Sampling,
    *,
    seed: int,
    pixel_values: torch.Tensor | None = None,
    unconditional: list[int] | None = None,
) -> list[int]:
    """Up to ``sampling.steps`` tokens after ``prompt``, each from ``allowed`` (a bool mask over the
    vocabulary); stops after ``stop_token``. With ``unconditional`` and cfg_scale != 1 the logits are
    guided by a second stream that sees the same sampled tokens."""
    device = model.lm.lm_head.weight.device
    generator = torch.Generator().manual_seed(seed)
    allowed = allowed.to(device)
    streams = [_Stream(model, prompt, pixel_values, device)]
    guided = unconditional is not None and sampling.cfg_scale != 1.0
    if guided:
        streams.append(_Stream(model, unconditional, None, device))
    tokens: list[int] = []
    for _ in range(sampling.steps):
        logits = restrict(streams[0].logits, allowed)
        if guided:
            logits = restrict(guide(logits, streams[1].logits, sampling.cfg_scale), allowed)
        token = pick(logits, sampling, generator)
        tokens.append(token)
        if token == sampling.stop_token or len(tokens) == sampling.steps:
            break
        for stream in streams:
            stream.feed(token)
    return tokens


def image_code_mask(model: UniToken) -> torch.Tensor:
    mask = torch.zeros(model.lm.config.vocab_size, dtype=torch.bool)
    mask[model.code_to_token.cpu()] = True
    return mask


def text_mask(model: UniToken) -> torch.Tensor:
    """Everything but image codes and image markers: what a caption may contain."""
    ids = model.layout.ids
    mask = ~image_code_mask(model)
    mask[[ids.start_of_image, ids.end_of_image, ids.separator, ids.continuous, ids.pad, ids.bos]] = False
    return mask

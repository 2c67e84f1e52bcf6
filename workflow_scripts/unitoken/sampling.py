"""Autoregressive sampling for UniToken: captions (text tokens) and images (the released layout).

One loop serves both; what a step may emit is decided by transformers ``LogitsProcessor``s run on the
sequence so far, in the released order (SxJyJay/UniToken ``inference_solver_base.py``): classifier-free
guidance, then the image layout (forced grid sizes, new-lines and end; image codes elsewhere), then
temperature and top-k in :func:`pick`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import LogitsProcessor, LogitsProcessorList

from workflow_scripts.unitoken.model import UniToken
from workflow_scripts.unitoken.sequence import TokenIds


@dataclass(frozen=True)
class Sampling:
    steps: int
    temperature: float = 1.0  # 0: greedy
    top_k: int = 0  # 0: off
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


def _open_image_start(ids: torch.Tensor, start: int, end: int) -> int | None:
    """Index of the <start-of-image> whose image is still being written, else None."""
    starts = (ids == start).nonzero().flatten()
    if len(starts) != int((ids == end).sum()) + 1:
        return None
    return int(starts[-1])


class AllowedTokens(LogitsProcessor):
    """Every position restricted to a token set (captions: no image codes or image markers)."""

    def __init__(self, allowed: torch.Tensor):
        self.allowed = allowed

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        return scores.masked_fill(~self.allowed.to(scores.device), float("-inf"))


class ImageLayoutProcessor(LogitsProcessor):
    """Inside an open image (one more <start-of-image> than <end-of-image> so far): the two grid-size
    tokens, then each (cols + 1)-th token the new-line, after the last row <end-of-image>; every other
    position may only be an image code. Outside an image the scores pass unchanged."""

    def __init__(
        self, ids: TokenIds, grid_tokens: tuple[int, int], rows: int, cols: int, codes: torch.Tensor
    ):
        self.ids, self.grid_tokens, self.rows, self.cols = ids, grid_tokens, rows, cols
        self.codes = codes  # bool mask over the vocabulary

    def forced(self, written: int) -> int | None:
        """The token forced after ``written`` tokens of the image (its start excluded), or None."""
        if written < 2:
            return self.grid_tokens[written]
        body = written - 2
        if body >= self.rows * (self.cols + 1):
            return self.ids.end_of_image
        if (body + 1) % (self.cols + 1) == 0:
            return self.ids.new_line
        return None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        scores = scores.clone()
        for row, ids in enumerate(input_ids):
            start = _open_image_start(ids, self.ids.start_of_image, self.ids.end_of_image)
            if start is None:
                continue
            token = self.forced(len(ids) - start - 1)
            if token is None:
                scores[row] = scores[row].masked_fill(~self.codes.to(scores.device), float("-inf"))
            else:
                scores[row] = float("-inf")
                scores[row, token] = 0.0
        return scores


class ImageStartGuidance(LogitsProcessor):
    """Classifier-free guidance over an image's codes: once its two grid sizes are written, a second
    stream decodes the sequence from the last <start-of-image> on (no prompt, no <s>) and each score
    becomes uncond + scale * (cond - uncond). One sequence at a time, as the released processor."""

    def __init__(self, model: UniToken, scale: float):
        self.model, self.scale = model, scale
        self.stream: _Stream | None = None
        self.fed = 0

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if input_ids.shape[0] != 1:
            raise ValueError("classifier-free guidance samples one sequence at a time")
        ids = self.model.layout.ids
        start = _open_image_start(input_ids[0], ids.start_of_image, ids.end_of_image)
        if start is None:
            self.stream = None
            return scores
        context = input_ids[0, start:].tolist()
        if len(context) < 3 or self.scale == 1.0:  # the grid sizes are forced, never guided
            return scores
        if self.stream is None:
            self.stream = _Stream(self.model, context, None, input_ids.device)
        else:
            for token in context[self.fed :]:
                self.stream.feed(token)
        self.fed = len(context)
        return guide(scores, self.stream.logits.to(scores.dtype).unsqueeze(0), self.scale)


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
    processors: list[LogitsProcessor],
    sampling: Sampling,
    *,
    seed: int,
    pixel_values: torch.Tensor | None = None,
) -> list[int]:
    """Up to ``sampling.steps`` tokens after ``prompt``, each step's scores passed through
    ``processors`` (with the whole sequence so far) before temperature and top-k; stops after
    ``stop_token``."""
    device = model.lm.lm_head.weight.device
    generator = torch.Generator().manual_seed(seed)
    processors = LogitsProcessorList(processors)
    stream = _Stream(model, prompt, pixel_values, device)
    sequence = torch.tensor([prompt], device=device)
    tokens: list[int] = []
    for _ in range(sampling.steps):
        logits = processors(sequence, stream.logits.unsqueeze(0))[0]
        token = pick(logits, sampling, generator)
        tokens.append(token)
        if token == sampling.stop_token or len(tokens) == sampling.steps:
            break
        sequence = torch.cat([sequence, torch.tensor([[token]], device=device)], dim=1)
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
    markers = [ids.start_of_image, ids.end_of_image, ids.separator, ids.continuous, ids.new_line]
    mask[[*markers, ids.pad, ids.bos]] = False
    return mask


def drawing_processors(model: UniToken, rows: int, cols: int, cfg_scale: float) -> list[LogitsProcessor]:
    """What drawing a rows x cols image after <start-of-image> runs, in the released order."""
    layout = model.layout
    grid = (layout.grid_token(rows), layout.grid_token(cols))
    return [
        ImageStartGuidance(model, cfg_scale),
        ImageLayoutProcessor(layout.ids, grid, rows, cols, image_code_mask(model)),
    ]

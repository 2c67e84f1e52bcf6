"""Pairwise caption-quality judge (Table 5): win / tie / loss of one system's captions against another's.

Every pair is judged in both orders (A/B and B/A); verdicts that disagree count as a tie. Backends: an
exact scene-graph judge for synthetic images (F1 of the (colour, shape) objects a caption names against
the scene graph; a difference under the margin is a tie) and a local VLM that sees the image.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable

import numpy as np
from PIL import Image

from workflow_scripts.data import scenes

Verdict = str  # "first" | "second" | "tie"
Judge = Callable[[Image.Image | None, dict | None, str, str], Verdict]

_OBJECT = re.compile(
    rf"\b({'|'.join(scenes.COLORS)})\s+(?:(?:{'|'.join(scenes.SIZES)}|{'|'.join(scenes.TEXTURES)})\s+)?"
    rf"({'|'.join(scenes.SHAPES)})(?:e?s)?\b"
)


def mentioned_objects(caption: str) -> set[tuple[str, str]]:
    return set(_OBJECT.findall(caption.lower()))


def scene_f1(caption: str, scene: scenes.Scene) -> float:
    truth = {(o.color, o.shape) for o in scene.objects}
    said = mentioned_objects(caption)
    hits = len(truth & said)
    if not hits:
        return 0.0
    precision, recall = hits / len(said), hits / len(truth)
    return 2 * precision * recall / (precision + recall)


def scene_graph_judge(margin: float) -> Judge:
    def judge(image, meta, first: str, second: str) -> Verdict:
        scene = scenes.Scene.from_json(json.dumps(meta["scene"]))
        a, b = scene_f1(first, scene), scene_f1(second, scene)
        return "tie" if abs(a - b) < margin else ("first" if a > b else "second")

    return judge


class VLMJudge:
    """A local image-text-to-text model asked which caption is better (or a tie)."""

    QUESTION = (
        "Two captions describe this image.\nCaption 1: {first}\nCaption 2: {second}\nWhich caption is more "
        "complete, more accurate and more useful for redrawing the image? Answer 1, 2 or tie."
    )

    def __init__(self, path: str, device, models) -> None:
        from workflow_scripts.harness.device import place, spread_device_map
        from workflow_scripts.models.encoder import load_encoder

        dtype = models.torch_dtype(device)  # a 72B judge in bf16 on GPUs (models.dtype)
        self.encoder = load_encoder(
            path, key="eval.judge.judges", dtype=dtype, device_map=spread_device_map()
        )
        self.encoder.model = place(self.encoder.model, device)

    def __call__(self, image, meta, first: str, second: str) -> Verdict:
        from workflow_scripts.models.encoder import CaptionPrompt

        answer = self.encoder.caption(
            [image],
            CaptionPrompt(self.QUESTION.format(first=first, second=second), instruction_first=False),
            temperature=0.0,
            max_new_tokens=8,
            generator_seed=0,
        )[0].lower()
        if re.search(r"\btie\b", answer):
            return "tie"
        found = re.findall(r"\b([12])\b", answer)
        if len(set(found)) != 1:
            return "tie"
        return "first" if found[0] == "1" else "second"


def compare(judge: Judge, image, meta, caption_a: str, caption_b: str) -> tuple[str, str, str]:
    """(verdict as A vs B, verdict as B vs A, final): win for A, loss for A, or tie if they disagree."""
    forward = judge(image, meta, caption_a, caption_b)
    backward = judge(image, meta, caption_b, caption_a)
    as_a = {"first": "win", "second": "loss", "tie": "tie"}[forward]
    as_a_backward = {"first": "loss", "second": "win", "tie": "tie"}[backward]
    return forward, backward, as_a if as_a == as_a_backward else "tie"


def summarize(verdicts: list[str]) -> dict[str, float]:
    n = max(len(verdicts), 1)
    return {k: 100.0 * verdicts.count(k) / n for k in ("win", "tie", "loss")} | {"items": len(verdicts)}


def mean_row(rows: dict[str, dict[str, float]]) -> dict[str, float]:
    return {k: float(np.mean([r[k] for r in rows.values()])) for k in ("win", "tie", "loss")}

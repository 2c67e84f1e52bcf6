"""GenEval detectors and colour classifiers (pluggable).

* :class:`ShapesDetector` is exact for the procedural shapes world: objects are the connected regions
  that differ from the plain background; each region's class is the shape whose rendered template
  overlaps it best, and that overlap (IoU of tight masks) is its confidence.
* :class:`TransformersDetector` wraps any transformers object-detection model from a local path.
* :class:`PaletteColors` names the nearest of the ten colours to an object's dominant pixels;
  :class:`ClipColors` is GenEval's CLIP zero-shot colour classification of the crop (grey outside the mask).
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import torch
from PIL import Image
from scipy import ndimage

from workflow_scripts.data import scenes
from workflow_scripts.eval.geneval import COLORS, Detection

TEMPLATE_SIDE = 32
_PALETTE = np.array([scenes.COLORS[c] for c in COLORS], dtype=np.float32)
_TONES = np.concatenate([_PALETTE, np.array([scenes.pattern_shade(c) for c in COLORS], dtype=np.float32)])


def _tight(mask: np.ndarray) -> np.ndarray:
    ys, xs = np.nonzero(mask)
    return mask[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]


def _normalised(mask: np.ndarray) -> np.ndarray:
    image = Image.fromarray(mask.astype(np.uint8) * 255).resize(
        (TEMPLATE_SIDE, TEMPLATE_SIDE), Image.Resampling.NEAREST
    )
    return np.asarray(image) > 127


class ShapesDetector:
    def __init__(
        self,
        classes: tuple[str, ...] = scenes.SHAPES,
        *,
        background_distance: float = 40.0,
        min_area: float = 0.002,
    ) -> None:
        self.classes = classes
        self.background_distance = background_distance
        self.min_area = min_area
        self.templates = {c: _normalised(_tight(np.asarray(scenes.shape_mask(c, 96)) > 127)) for c in classes}

    def __call__(self, image: Image.Image) -> dict[str, list[Detection]]:
        pixels = np.asarray(image.convert("RGB"), dtype=np.float32)
        border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
        background = np.median(border, axis=0)
        foreground = np.linalg.norm(pixels - background, axis=-1) > self.background_distance
        labels, count = ndimage.label(foreground, structure=np.ones((3, 3)))
        detections: dict[str, list[Detection]] = {}
        min_pixels = self.min_area * foreground.size
        for region in range(1, count + 1):
            mask = labels == region
            if mask.sum() < max(min_pixels, 4):
                continue
            ys, xs = np.nonzero(mask)
            box = (float(xs.min()), float(ys.min()), float(xs.max()), float(ys.max()))
            shape = _normalised(_tight(mask))
            scores = {c: (shape & t).sum() / max((shape | t).sum(), 1) for c, t in self.templates.items()}
            best = max(scores, key=scores.get)
            detections.setdefault(best, []).append(Detection(box, float(scores[best]), mask))
        return detections


class TransformersDetector:
    """Any AutoModelForObjectDetection checkpoint; its label names are mapped to the benchmark's classes."""

    ALIASES: ClassVar[dict[str, str]] = {
        "computer mouse": "mouse",
        "tv remote": "remote",
        "computer keyboard": "keyboard",
    }

    def __init__(self, path: str, classes: tuple[str, ...], device: torch.device) -> None:
        from transformers import AutoImageProcessor, AutoModelForObjectDetection

        self.processor = AutoImageProcessor.from_pretrained(path)
        self.model = AutoModelForObjectDetection.from_pretrained(path).to(device).eval()
        self.device = device
        labels = {v.lower(): int(k) for k, v in self.model.config.id2label.items()}
        self.label_of = {}
        for cls in classes:
            name = self.ALIASES.get(cls, cls)
            if name not in labels:
                raise ValueError(f"eval.detector.path: the detector has no label for class '{cls}'")
            self.label_of[labels[name]] = cls

    @torch.no_grad()
    def __call__(self, image: Image.Image) -> dict[str, list[Detection]]:
        inputs = self.processor(images=image, return_tensors="pt").to(self.device)
        outputs = self.model(**inputs)
        result = self.processor.post_process_object_detection(
            outputs, threshold=0.0, target_sizes=[image.size[::-1]]
        )[0]
        detections: dict[str, list[Detection]] = {}
        for score, label, box in zip(result["scores"], result["labels"], result["boxes"], strict=True):
            cls = self.label_of.get(int(label))
            if cls is not None:
                detections.setdefault(cls, []).append(Detection(tuple(box.tolist()), float(score)))
        return detections


def _crop(image: Image.Image, det: Detection, fill=(153, 153, 153)) -> Image.Image:
    """The detection's box crop with pixels outside its mask set to GenEval's grey #999."""
    if det.mask is not None:
        blank = Image.new("RGB", image.size, fill)
        image = Image.composite(image, blank, Image.fromarray(det.mask.astype(np.uint8) * 255))
    x0, y0, x1, y1 = det.box
    return image.crop((int(x0), int(y0), int(x1) + 1, int(y1) + 1))


class PaletteColors:
    """The reference colour whose flat tone or texture shade covers most of the object's pixels.

    Each pixel votes for its nearest tone among the ten colours and their pattern shades (the renderer
    draws stripes, dots and checks in a darker shade of the object's own colour), and a shade's vote
    goes to its colour.
    """

    def __call__(self, image: Image.Image, cls: str, dets: list[Detection]) -> list[str]:
        pixels = np.asarray(image.convert("RGB"), dtype=np.float32)
        out = []
        for det in dets:
            region = (
                pixels[det.mask]
                if det.mask is not None
                else np.asarray(_crop(image, det), np.float32).reshape(-1, 3)
            )
            nearest = np.linalg.norm(region[:, None] - _TONES[None], axis=-1).argmin(1) % len(COLORS)
            out.append(COLORS[int(np.bincount(nearest, minlength=len(COLORS)).argmax())])
        return out


class ClipColors:
    """GenEval's colour rule: CLIP zero-shot over the ten colours with its three templates."""

    TEMPLATES = ("a photo of a {c} {cls}", "a photo of a {c}-colored {cls}", "a photo of a {c} object")

    def __init__(self, path: str, device: torch.device) -> None:
        import open_clip

        self.model, _, self.transform = open_clip.create_model_and_transforms(f"local-dir:{path}")
        self.model = self.model.to(device).eval()
        self.tokenizer = open_clip.get_tokenizer(f"local-dir:{path}")
        self.device = device
        self.classifiers: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def _classifier(self, cls: str) -> torch.Tensor:
        if cls not in self.classifiers:
            weights = []
            for color in COLORS:
                tokens = self.tokenizer([t.format(c=color, cls=cls) for t in self.TEMPLATES]).to(self.device)
                emb = torch.nn.functional.normalize(self.model.encode_text(tokens), dim=-1).mean(0)
                weights.append(torch.nn.functional.normalize(emb, dim=0))
            self.classifiers[cls] = torch.stack(weights, dim=1)
        return self.classifiers[cls]

    @torch.no_grad()
    def __call__(self, image: Image.Image, cls: str, dets: list[Detection]) -> list[str]:
        crops = torch.stack([self.transform(_crop(image.convert("RGB"), d)) for d in dets]).to(self.device)
        features = torch.nn.functional.normalize(self.model.encode_image(crops), dim=-1)
        return [COLORS[i] for i in (features @ self._classifier(cls)).argmax(1).tolist()]

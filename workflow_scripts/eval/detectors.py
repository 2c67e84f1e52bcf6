"""GenEval detectors and colour classifiers (pluggable).

* :class:`ShapesDetector` is exact for the procedural shapes world: objects are the connected regions
  that differ from the plain background; each region's class is the shape whose rendered template
  overlaps it best, and that overlap (IoU of tight masks) is its confidence.
* :class:`Mask2FormerDetector` is GenEval's official kind: a COCO instance-segmentation
  ``Mask2FormerForUniversalSegmentation`` from a local path, giving every object a mask.
* :class:`TransformersDetector` wraps any box-only transformers object-detection model (a deviation the
  score record states: colours are then read on box crops).
* :class:`PaletteColors` names the nearest of the ten colours to an object's dominant pixels;
  :class:`ClipColors` is GenEval's CLIP zero-shot colour classification of the crop (grey outside the mask).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from scipy import ndimage

from workflow_scripts.data import scenes
from workflow_scripts.eval.config import DetectorConfig
from workflow_scripts.eval.geneval import COLORS, Detection, ScoringConstants

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


# GenEval's prompt names for three COCO classes whose detector labels are shorter
ALIASES = {"computer mouse": "mouse", "tv remote": "remote", "computer keyboard": "keyboard"}


def label_map(id2label: Mapping, classes: tuple[str, ...], path: str) -> dict[int, str]:
    """Detector label id -> benchmark class, from the model's ``config.id2label``."""
    labels = {str(v).lower(): int(k) for k, v in id2label.items()}
    out = {}
    for cls in classes:
        name = ALIASES.get(cls, cls)
        if name not in labels:
            raise ValueError(
                f"eval.detector.path: the detector at {path} has no label for class '{cls}' (its "
                "config.id2label must name GenEval's COCO classes): use a COCO detector"
            )
        out[labels[name]] = cls
    return out


def _mask2former_processor(path: str):
    """The detector's image processor as saved, except a pre-v5 ``size`` (``384`` or ``{shortest_edge:
    384}``, how transformers 4 wrote MaskFormer-family configs): transformers 5 refuses a resize without
    ``longest_edge``, which transformers 4 completed with 1333; complete it the same way."""
    from transformers import AutoImageProcessor

    saved = Path(path) / "preprocessor_config.json"
    size = json.loads(saved.read_text()).get("size") if saved.exists() else None
    if isinstance(size, int):
        size = {"shortest_edge": size}
    if isinstance(size, dict) and "shortest_edge" in size and "longest_edge" not in size:
        return AutoImageProcessor.from_pretrained(path, size={**size, "longest_edge": 1333})
    return AutoImageProcessor.from_pretrained(path)


class Mask2FormerDetector:
    """GenEval's detector family: Mask2Former instance segmentation (official: Swin-S, COCO).

    transformers' ``post_process_instance_segmentation`` ranks query x class pairs like mmdetection
    (class probability x the mean mask probability inside the mask, top ``num_queries``); with binary
    maps instances may overlap, as upstream's. Each detection keeps its mask at the image's size, and its
    box is the mask's pixel bounds (inclusive, as every :class:`Detection` box here).
    """

    def __init__(
        self, path: str, classes: tuple[str, ...], device: torch.device, *, min_score: float = 0.0
    ) -> None:
        from transformers import Mask2FormerForUniversalSegmentation

        self.processor = _mask2former_processor(path)
        self.model = Mask2FormerForUniversalSegmentation.from_pretrained(path).to(device).eval()
        self.device = device
        self.min_score = min_score  # the scorer's own threshold still applies (strictly above)
        self.label_of = label_map(self.model.config.id2label, classes, path)

    @torch.no_grad()
    def __call__(self, image: Image.Image) -> dict[str, list[Detection]]:
        image = image.convert("RGB")
        inputs = self.processor(images=image, return_tensors="pt").to(self.device)
        return self.detections(self.model(**inputs), image.size)

    def detections(self, outputs, size: tuple[int, int]) -> dict[str, list[Detection]]:
        """The model's outputs for one image of ``size`` (width, height) -> per-class detections."""
        result = self.processor.post_process_instance_segmentation(
            outputs, threshold=self.min_score, target_sizes=[size[::-1]], return_binary_maps=True
        )[0]
        detections: dict[str, list[Detection]] = {}
        if not result["segments_info"]:
            return detections
        masks = result["segmentation"].bool().cpu().numpy()
        for info, mask in zip(result["segments_info"], masks, strict=True):
            cls = self.label_of.get(int(info["label_id"]))
            if cls is None or not mask.any():
                continue
            ys, xs = np.nonzero(mask)
            box = (float(xs.min()), float(ys.min()), float(xs.max()), float(ys.max()))
            detections.setdefault(cls, []).append(Detection(box, float(info["score"]), mask))
        return detections


class TransformersDetector:
    """Any box-only AutoModelForObjectDetection checkpoint; label names mapped to the benchmark's classes."""

    def __init__(self, path: str, classes: tuple[str, ...], device: torch.device) -> None:
        from transformers import AutoImageProcessor, AutoModelForObjectDetection

        self.processor = AutoImageProcessor.from_pretrained(path)
        self.model = AutoModelForObjectDetection.from_pretrained(path).to(device).eval()
        self.device = device
        self.label_of = label_map(self.model.config.id2label, classes, path)

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


def load_detector(cfg: DetectorConfig, classes: tuple[str, ...], device: torch.device):
    """The configured detector; ``classes``: the benchmark classes it must name."""
    if cfg.kind == "shapes":
        return ShapesDetector()
    if cfg.kind == "mask2former":
        floor = min(cfg.threshold, cfg.counting_threshold)  # nothing below it can be kept: drop it early
        return Mask2FormerDetector(cfg.path, classes, device, min_score=floor)
    return TransformersDetector(cfg.path, classes, device)


OFFICIAL = ScoringConstants()
BOX_ONLY = "box-only detector (no masks)"


def scoring_protocol(cfg: DetectorConfig) -> dict:
    """The detector half of a GenEval score record's "protocol": what scored it and every departure
    from the official scorer (Mask2Former masks, CLIP ViT-L/14 colours on masked crops, 0.3 / 0.9 / 16 /
    no suppression)."""
    deviations = []
    if cfg.kind == "mask2former":
        detector = f"Mask2Former {Path(cfg.path or '?').name} (instance masks)"
    elif cfg.kind == "transformers":
        detector = f"{Path(cfg.path or '?').name} (boxes only)"
        deviations.append(BOX_ONLY)
    else:
        detector = "shapes-world exact detector (masks)"
        deviations.append("exact synthetic detector, not Mask2Former")
    if cfg.color == "clip":
        detector += ", colour: CLIP zero-shot"
    else:
        detector += ", colour: pixel palette"
        deviations.append("colour from pixel palette, not CLIP zero-shot")
    ours = (cfg.threshold, cfg.counting_threshold, cfg.max_objects, cfg.max_overlap)
    official = (OFFICIAL.threshold, OFFICIAL.counting_threshold, OFFICIAL.max_objects, OFFICIAL.max_overlap)
    if ours != official:
        deviations.append(
            "threshold / counting threshold / max objects / max overlap "
            f"{' / '.join(f'{v:g}' for v in ours)} (official: {' / '.join(f'{v:g}' for v in official)})"
        )
    return {"detector": detector, "judge": None, "deviations": deviations}


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

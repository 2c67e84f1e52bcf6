"""Does the recipe learn? Exact shapes-world measures of reconstructions and captions, each with a floor.

Unified-Bench's backbone similarities say how *close* a redrawn image is, never whether it is *right*;
on the shapes world (items whose meta carries a ``scene``) the scene graph says exactly what should be
there, so three figures can be checked:

* **Reconstruction checker** (per redrawn image, pass/fail + reason). The exact shapes detector
  (:class:`~workflow_scripts.eval.detectors.ShapesDetector`) finds the objects, the pixel palette
  (:class:`~workflow_scripts.eval.detectors.PaletteColors`) names each one's colour from the interior
  of its mask (:class:`InteriorColors`: a redrawn object's rim blends into the background, and on a
  small object the blended rim outvotes the core). A scene object is
  *found* by a detection of its colour whose box centre lies inside the object's box grown by
  ``CENTRE_TOLERANCE`` (a fraction of the image side) on every side; each detection finds at most one
  object (a maximum one-to-one matching), so two red objects need two red detections. The image passes
  when every object of its scene is found; extra detections do not fail it. **Shape-class accuracy**:
  of the found objects, the fraction whose detection has the object's shape class (pooled over images).
* **Caption recall** (per caption): the distinct colour words and the distinct shape-class words of the
  scene's objects that the caption names, as two fractions. A word matches as a whole word, lower case,
  shape classes also in their plural ("circles", "crosses"); the background's name is removed first, so
  "pale blue background" does not name a blue object. Each distinct word counts once however many
  objects carry it. A scene's figures are averaged over its images.
* **Floors**: the same measure on the same outputs judged against a *different* item's scene graph,
  a fixed derangement (item k of the scene items in id order against item k + 1, the last against the
  first): what a decoder that ignores the caption, or a captioner that ignores the image, scores.
* **Ceiling** (checker only): the checker on the system's own autoencoder's reconstruction of each
  original (encode then decode at the bench resolution): whether the decoder can carry the shapes at all.

GenEval's floor (:func:`geneval_floor`) is the same derangement within each task: every generated image
scored by the official rules against another prompt of its task.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from workflow_scripts.data import scenes
from workflow_scripts.eval import geneval
from workflow_scripts.eval.geneval import Detection
from workflow_scripts.geometry import center, region

CENTRE_TOLERANCE = 0.1  # of the image side: a detection's centre may sit this far outside the object's box
_UNMATCHABLE = 1e6
# noise levels of a decoder phase's caption-reliance loss (pretrain/decoder_flow.py), named on the report
CAPTION_RELIANCE_SIGMAS = (0.3, 0.5, 0.7, 0.9)


class InteriorColors:
    """PaletteColors on each mask eroded by one pixel (the whole mask when fewer than 4 pixels would
    remain). At the tiny bench's 64 px a reconstruction as sharp as a 27.6 dB autoencoder's (a
    Gaussian blur of 1 px) turns a small red object's rim pink and a black one's white; with the rim
    the checker passes 54 % of such blurred scenes, with the interior 75 %, and still 100 % of exact
    renders and 1 % of deranged ones (100 sampled scenes, tests/test_learning_metrics.py)."""

    def __init__(self, colors=None) -> None:
        from workflow_scripts.eval.detectors import PaletteColors

        self.colors = colors or PaletteColors()

    def __call__(self, image: Image.Image, cls: str, dets: list[Detection]) -> list[str]:
        from scipy import ndimage

        inner = []
        for det in dets:
            core = ndimage.binary_erosion(det.mask) if det.mask is not None else None
            keep = core is not None and core.sum() >= 4
            inner.append(Detection(det.box, det.score, core) if keep else det)
        return self.colors(image, cls, inner)


@dataclass(frozen=True)
class Verdict:
    """One redrawn image against one scene graph."""

    passed: bool
    reason: str
    objects: int  # in the scene
    found: int  # scene objects with a detection of their colour in their place
    shapes_right: int  # of the found, those whose detection has the object's shape class


def check_reconstruction(image: Image.Image, scene: scenes.Scene, detector, colors) -> Verdict:
    """Are the scene's object colours in the right places of ``image``? (rule: module docstring)"""
    from scipy.optimize import linear_sum_assignment  # here: the report imports this module's constants

    width, height = image.size
    raw = detector(image)
    dets: list[tuple[str, str, tuple[float, float]]] = []  # (class, colour, normalised centre)
    for cls, found in raw.items():
        for det, color in zip(found, colors(image, cls, found), strict=True):
            cx, cy = center(det.box)  # inclusive pixel bounds: the centre pixel's middle is +0.5
            dets.append((cls, color, ((cx + 0.5) / width, (cy + 0.5) / height)))
    objects = scene.objects
    cost = np.full((len(objects), max(len(dets), 1)), _UNMATCHABLE)
    for i, obj in enumerate(objects):
        x0, y0, x1, y1 = obj.box
        t = CENTRE_TOLERANCE
        for j, (_, color, (cx, cy)) in enumerate(dets):
            if color == obj.color and x0 - t <= cx <= x1 + t and y0 - t <= cy <= y1 + t:
                ox, oy = center(obj.box)
                cost[i, j] = float(np.hypot(cx - ox, cy - oy))
    rows, cols = linear_sum_assignment(cost)
    match = {int(i): int(j) for i, j in zip(rows, cols, strict=True) if cost[i, j] < _UNMATCHABLE}
    shapes_right = sum(dets[j][0] == objects[i].shape for i, j in match.items())
    missing = [i for i in range(len(objects)) if i not in match]
    if not missing:
        return Verdict(
            True,
            f"all {len(objects)} object(s) found: right colour in the right place",
            len(objects),
            len(match),
            shapes_right,
        )
    reasons, used = [], set(match.values())
    for i in missing:
        obj = objects[i]
        elsewhere = sorted(
            {
                region((x, y, x, y))
                for j, (_, c, (x, y)) in enumerate(dets)
                if c == obj.color and j not in used
            }
        )
        where = region(obj.box)
        if elsewhere:
            found_at = ", ".join(elsewhere)
            reasons.append(
                f"{obj.color} {obj.shape} expected at {where}, {obj.color} found only at {found_at}"
            )
        else:
            reasons.append(f"{obj.color} {obj.shape} expected at {where}, no {obj.color} object found")
    if not dets:
        reasons.append("no object detected")
    return Verdict(False, "; ".join(reasons), len(objects), len(match), shapes_right)


def derangement(count: int) -> list[int]:
    """Item k is judged against item k + 1 (the last against the first); no item against itself. None
    for fewer than two items."""
    return [(k + 1) % count for k in range(count)] if count >= 2 else []


_WORD = re.compile(r"[a-z]+")
_SHAPE_WORDS = {form: shape for shape in scenes.SHAPES for form in (shape, geneval.plural(shape))}


def caption_words(caption: str) -> tuple[set[str], set[str]]:
    """(colour words, shape classes) a caption names, by the matching rule of the module docstring."""
    text = caption.lower()
    for background in scenes.BACKGROUNDS:
        text = re.sub(rf"\b{background}\b", " ", text)
    words = set(_WORD.findall(text))
    return words & set(scenes.COLORS), {_SHAPE_WORDS[w] for w in words if w in _SHAPE_WORDS}


def caption_recall(caption: str, scene: scenes.Scene) -> tuple[float, float]:
    """(colour recall, shape-class recall) of one caption against one scene graph."""
    colors, shapes = caption_words(caption)
    truth_colors = {o.color for o in scene.objects}
    truth_shapes = {o.shape for o in scene.objects}
    return len(colors & truth_colors) / len(truth_colors), len(shapes & truth_shapes) / len(truth_shapes)


def scene_of(item: dict) -> scenes.Scene | None:
    scene = item.get("meta", {}).get("scene")
    return scenes.Scene.from_json(json.dumps(scene)) if scene else None


def _mean(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None


def _rates(verdicts: list[Verdict]) -> dict[str, float | None]:
    found = sum(v.found for v in verdicts)
    return {
        "rate": _mean([float(v.passed) for v in verdicts]),
        "shape_accuracy": sum(v.shapes_right for v in verdicts) / found if found else None,
    }


RECORD_KEYS = (
    "checker",  # "pass" / "fail"; None: no scene graph
    "checker_reason",
    "checker_objects",
    "checker_found",
    "checker_shapes_right",
    "color_recall",
    "shape_recall",
)
Autoencode = Callable[[list[Image.Image]], list[Image.Image]]


def unified_bench(
    records: list[dict],
    items: list[dict],
    originals: Path,
    autoencoder: Callable[[], Autoencode | None] | None,
    detector=None,
    colors=None,
) -> tuple[list[dict], dict]:
    """Checker verdicts and caption recall on every record of a shapes-world item (others get None),
    and the summary ``{"checker": {...}, "captions": {...}}`` with floors and the ceiling; ``{}`` when no
    item has a scene graph (e.g. the official image folder). ``originals``: the item set's images/;
    ``autoencoder``: builds the system's autoencoder (called only when there is something to check;
    None, or a None result: the ceiling is not measured)."""
    from workflow_scripts.eval.detectors import ShapesDetector

    detector = detector or ShapesDetector()
    colors = colors or InteriorColors()
    by_id = {i["item_id"]: i for i in items}
    for record in records:  # every record gets every column (a parquet table takes its first row's keys)
        record.update(dict.fromkeys(RECORD_KEYS))
    scored = [(r, scene_of(by_id[r["item_id"]])) for r in records if r["item_id"] in by_id]
    scored = sorted([(r, s) for r, s in scored if s is not None], key=lambda rs: rs[0]["item_id"])
    if not scored:
        return records, {}
    outputs = [Image.open(r["output"]).convert("RGB") for r, _ in scored]
    verdicts, color_recall, shape_recall = [], [], []
    for (record, scene), output in zip(scored, outputs, strict=True):
        verdict = check_reconstruction(output, scene, detector, colors)
        colour, shape = caption_recall(record.get("caption") or "", scene)
        record.update(
            checker="pass" if verdict.passed else "fail",
            checker_reason=verdict.reason,
            checker_objects=verdict.objects,
            checker_found=verdict.found,
            checker_shapes_right=verdict.shapes_right,
            color_recall=colour,
            shape_recall=shape,
        )
        verdicts.append(verdict)
        color_recall.append(colour)
        shape_recall.append(shape)
    # one scene item has no other to be judged against: no floor then (derangement is empty)
    pairs = list(zip(scored, outputs, derangement(len(scored)), strict=False))
    floor_verdicts = [check_reconstruction(out, scored[k][1], detector, colors) for _, out, k in pairs]
    floor_recall = [caption_recall(rs[0].get("caption") or "", scored[k][1]) for rs, _, k in pairs]
    ceiling: dict[str, float | None] = {"rate": None, "shape_accuracy": None}
    autoencode = autoencoder() if autoencoder is not None else None
    if autoencode is not None:
        pictures = [Image.open(originals / by_id[r["item_id"]]["image"]).convert("RGB") for r, _ in scored]
        redrawn = autoencode(pictures)
        ceiling = _rates(
            [
                check_reconstruction(image, scene, detector, colors)
                for image, (_, scene) in zip(redrawn, scored, strict=True)
            ]
        )
    floor = _rates(floor_verdicts)
    summary = {
        "checker": {
            **_rates(verdicts),
            "images": len(scored),
            "floor": floor,
            "ceiling": ceiling,
        },
        "captions": {
            "color_recall": _mean(color_recall),
            "shape_recall": _mean(shape_recall),
            "images": len(scored),
            "floor": {
                "color_recall": _mean([c for c, _ in floor_recall]),
                "shape_recall": _mean([s for _, s in floor_recall]),
            },
        },
    }
    return records, summary


def geneval_floor_specs(records: list[dict]) -> dict[str, dict]:
    """item id -> the metadata its images are judged against for GenEval's floor: another prompt of its
    own task (the derangement over the task's prompts in id order). A task with one prompt has none."""
    prompts: dict[str, list[str]] = {}
    metadata: dict[str, dict] = {}
    for record in records:
        if record["item_id"] not in metadata:
            metadata[record["item_id"]] = json.loads(record["metadata"])
            prompts.setdefault(record["tag"], []).append(record["item_id"])
    against = {}
    for ids in prompts.values():
        ordered = sorted(ids)
        for k, j in enumerate(derangement(len(ordered))):
            against[ordered[k]] = metadata[ordered[j]]
    return against


def geneval_floor(records: list[dict], tasks: Sequence[str]) -> dict:
    """Per-task floor accuracy (records' ``floor_correct``; None: the task has one prompt) and their
    mean over the tasks that have one."""
    per_task: dict[str, list[bool]] = {}
    for record in records:
        if record.get("floor_correct") is not None:
            per_task.setdefault(record["tag"], []).append(bool(record["floor_correct"]))
    floors = {t: float(np.mean(per_task[t])) for t in tasks if t in per_task}
    return {
        "overall": float(np.mean(list(floors.values()))) if floors else None,
        "per_task": floors,
        "tasks": len(floors),
    }


def system_autoencoder(record: dict, device, dtype) -> Autoencode | None:
    """The autoencoder a system draws through, as images -> reconstructions at the same size: a UAE
    decoder's VAE (posterior mode, then decode), a release checkpoint's SD3 VAE, UniToken's VQ tokenizer
    (at its own resolution, resized back as its drawings are). None for a system without a decoder."""
    import torch

    from workflow_scripts.reward.pixels import to_pil, to_unit

    if record.get("family") == "unitoken":
        from workflow_scripts.unitoken.vq import VQTokenizer, to_images, to_pixels

        vq = VQTokenizer.from_pretrained(record["vq"]).to(device).eval()

        @torch.no_grad()
        def through_vq(pictures: list[Image.Image]) -> list[Image.Image]:
            out = []
            for picture in pictures:
                (decoded,) = to_images(vq(to_pixels([picture], vq.config.resolution).to(device))[0])
                out.append(decoded.resize(picture.size, Image.Resampling.BICUBIC))
            return out

        return through_vq
    from diffusers import AutoencoderKL

    from workflow_scripts.models.decoder import vae_folder

    if record.get("kind") == "uae-release":
        folder = Path(record["release"]) / "SD3_model" / "vae"
    elif record.get("decoder"):
        folder = vae_folder(record["decoder"])
    else:
        return None
    vae = AutoencoderKL.from_pretrained(folder, dtype=dtype).to(device).eval()

    @torch.no_grad()
    def through_vae(pictures: list[Image.Image]) -> list[Image.Image]:
        out = []
        for picture in pictures:  # one at a time: the bench images need not share a size
            pixels = to_unit([picture]).to(device, vae.dtype) * 2 - 1
            decoded = vae.decode(vae.encode(pixels).latent_dist.mode()).sample.float()
            out.extend(to_pil(decoded / 2 + 0.5))
        return out

    return through_vae

"""GenEval (Ghosh et al. 2023): the prompt recipe and the official scoring rules (GenEval++, a VLM-judged
benchmark, is :mod:`workflow_scripts.eval.geneval_pp`).

The prompt recipe draws from ``numpy.random.default_rng(43)`` in the official order (single objects for
every class, then 100 samples each of two_object, counting, colors, position, color_attr; exact
duplicates dropped); with the 80 COCO names this reproduces the official 553-prompt file. With the
shapes world's classes it gives prompts the tiny preset's exact detector can score.

Scoring constants (official defaults): confidence > 0.3 (> 0.9 for counting), at most 16 detections per
class, no overlap suppression, position threshold 0.1 of the summed box sizes. Colour and position are
judged on each include clause's top-``count`` detections; include clauses are ANDed, exclude clauses ORed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import yaml

from workflow_scripts.geometry import relative_position

COCO_CLASSES = (
    "person",
    "bicycle",
    "car",
    "motorcycle",
    "airplane",
    "bus",
    "train",
    "truck",
    "boat",
    "traffic light",
    "fire hydrant",
    "stop sign",
    "parking meter",
    "bench",
    "bird",
    "cat",
    "dog",
    "horse",
    "sheep",
    "cow",
    "elephant",
    "bear",
    "zebra",
    "giraffe",
    "backpack",
    "umbrella",
    "handbag",
    "tie",
    "suitcase",
    "frisbee",
    "skis",
    "snowboard",
    "sports ball",
    "kite",
    "baseball bat",
    "baseball glove",
    "skateboard",
    "surfboard",
    "tennis racket",
    "bottle",
    "wine glass",
    "cup",
    "fork",
    "knife",
    "spoon",
    "bowl",
    "banana",
    "apple",
    "sandwich",
    "orange",
    "broccoli",
    "carrot",
    "hot dog",
    "pizza",
    "donut",
    "cake",
    "chair",
    "couch",
    "potted plant",
    "bed",
    "dining table",
    "toilet",
    "tv",
    "laptop",
    "computer mouse",
    "tv remote",
    "computer keyboard",
    "cell phone",
    "microwave",
    "oven",
    "toaster",
    "sink",
    "refrigerator",
    "book",
    "clock",
    "vase",
    "scissors",
    "teddy bear",
    "hair drier",
    "toothbrush",
)
COLORS = ("red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "black", "white")
POSITIONS = ("left of", "right of", "above", "below")
NUMBERS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")
TASKS = ("single_object", "two_object", "counting", "colors", "position", "color_attr")


def with_article(word: str) -> str:
    return f"an {word}" if word[0] in "aeiou" else f"a {word}"


def plural(word: str) -> str:
    return f"{word}es" if word.endswith("s") else f"{word}s"


def geneval_prompts(
    classes: Sequence[str], *, per_task: int = 100, seed: int = 43, colorless: str | None = "person"
) -> list[dict]:
    """The official recipe. ``colorless``: the class never given a colour (official: 'person'); its
    index offsets the colour tasks' class draws exactly as the official script does."""
    rng = np.random.default_rng(seed)
    n = len(classes)
    offset = classes.index(colorless) if colorless in classes else 0
    skip = 1 if colorless in classes else 0
    items = []
    for idx in rng.choice(n, size=n, replace=False):
        items.append(
            {
                "tag": "single_object",
                "include": [{"class": classes[idx], "count": 1}],
                "prompt": f"a photo of {with_article(classes[idx])}",
            }
        )
    for _ in range(per_task):
        a, b = rng.choice(n, size=2, replace=False)
        items.append(
            {
                "tag": "two_object",
                "include": [{"class": classes[a], "count": 1}, {"class": classes[b], "count": 1}],
                "prompt": f"a photo of {with_article(classes[a])} and {with_article(classes[b])}",
            }
        )
    for _ in range(per_task):
        idx = rng.choice(n)
        num = int(rng.integers(2, 4, endpoint=True))
        items.append(
            {
                "tag": "counting",
                "include": [{"class": classes[idx], "count": num}],
                "exclude": [{"class": classes[idx], "count": num + 1}],
                "prompt": f"a photo of {NUMBERS[num]} {plural(classes[idx])}",
            }
        )
    for _ in range(per_task):
        idx = (rng.choice(n - skip) + skip + offset) % n
        color = COLORS[rng.choice(len(COLORS))]
        items.append(
            {
                "tag": "colors",
                "include": [{"class": classes[idx], "count": 1, "color": color}],
                "prompt": f"a photo of {with_article(color)} {classes[idx]}",
            }
        )
    for _ in range(per_task):
        a, b = rng.choice(n, size=2, replace=False)
        position = POSITIONS[rng.choice(len(POSITIONS))]
        items.append(
            {
                "tag": "position",
                "include": [
                    {"class": classes[b], "count": 1},
                    {"class": classes[a], "count": 1, "position": [position, 0]},
                ],
                "prompt": f"a photo of {with_article(classes[a])} {position} {with_article(classes[b])}",
            }
        )
    for _ in range(per_task):
        a, b = (rng.choice(n - skip, size=2, replace=False) + skip + offset) % n
        ca, cb = rng.choice(len(COLORS), size=2, replace=False)
        items.append(
            {
                "tag": "color_attr",
                "include": [
                    {"class": classes[a], "count": 1, "color": COLORS[ca]},
                    {"class": classes[b], "count": 1, "color": COLORS[cb]},
                ],
                "prompt": f"a photo of {_phrase(1, COLORS[ca], classes[a])} and "
                f"{_phrase(1, COLORS[cb], classes[b])}",
            }
        )
    unique, seen = [], set()
    for item in items:
        key = yaml.safe_dump(_official_form(item))
        if key not in seen:
            unique.append(item)
            seen.add(key)
    return unique


def _official_form(item: dict) -> dict:
    """Positions are tuples in the official generator; YAML tells a tuple from a list."""
    out = dict(item)
    out["include"] = [
        {**c, "position": tuple(c["position"])} if "position" in c else c for c in item["include"]
    ]
    return out


def _phrase(count: int, color: str | None, cls: str) -> str:
    """'a red circle', 'three red circles', 'an apple', 'two apples'."""
    words = f"{color} {cls}" if color else cls
    if count == 1:
        return with_article(words)
    return f"{NUMBERS[count]} {color + ' ' if color else ''}{plural(cls)}"


# --- scoring ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Detection:
    box: tuple[float, float, float, float]
    score: float
    mask: np.ndarray | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class ScoringConstants:
    threshold: float = 0.3
    counting_threshold: float = 0.9
    max_objects: int = 16
    max_overlap: float = 1.0  # 1.0: no suppression (official default)


def iou(a, b) -> float:
    """Box IoU with the official +1 pixel convention."""
    area = lambda box: max(box[2] - box[0] + 1, 0) * max(box[3] - box[1] + 1, 0)  # noqa: E731
    inter = area([max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])])
    union = area(a) + area(b) - inter
    return inter / union if union else 0.0


def keep(
    detections: dict[str, list[Detection]], tag: str, constants: ScoringConstants
) -> dict[str, list[Detection]]:
    """Per class: above the confidence threshold, highest score first, at most max_objects, greedy
    overlap suppression when max_overlap < 1.

    Equal scores keep upstream's order: the official script reverses an ascending ``np.argsort`` of the
    scores (stable for its short per-class lists), so of two tied detections the LATER one comes first.
    """
    threshold = constants.counting_threshold if tag == "counting" else constants.threshold
    kept = {}
    for cls, dets in detections.items():
        ascending = sorted(range(len(dets)), key=lambda i: dets[i].score)  # stable
        ordered = [dets[i] for i in reversed(ascending) if dets[i].score > threshold][: constants.max_objects]
        chosen: list[Detection] = []
        while ordered:
            best = ordered.pop(0)
            chosen.append(best)
            if constants.max_overlap < 1:
                ordered = [d for d in ordered if iou(best.box, d.box) < constants.max_overlap]
        if chosen:
            kept[cls] = chosen
    return kept


ColorFn = Callable[[str, list[Detection]], list[str]]


def evaluate(
    metadata: dict, detections: dict[str, list[Detection]], colors_of: ColorFn
) -> tuple[bool, list[str]]:
    """Correctness of one image and the reasons it failed (the official rules)."""
    reasons: list[str] = []
    groups: list[list[Detection] | None] = []
    for req in metadata.get("include", []):
        cls, count = req["class"], req["count"]
        found = detections.get(cls, [])[:count]
        matched = True
        if len(found) < count:
            matched = False
            reasons.append(f"expected {cls}>={count}, found {len(found)}")
        else:
            if "color" in req:
                colors = colors_of(cls, found)
                if colors.count(req["color"]) < count:
                    matched = False
                    seen = ", ".join(f"{colors.count(c)} {c}" for c in COLORS if c in colors)
                    reasons.append(
                        f"expected {req['color']} {cls}>={count}, found {colors.count(req['color'])} "
                        f"{req['color']}; and {seen}"
                    )
            if "position" in req and matched:
                relation, target = req["position"]
                if groups[target] is None:
                    matched = False
                    reasons.append(f"no target for {cls} to be {relation}")
                else:
                    for obj in found:
                        for other in groups[target]:
                            actual = relative_position(obj.box, other.box)
                            if relation not in actual:
                                matched = False
                                reasons.append(
                                    f"expected {cls} {relation} target, found "
                                    f"{' and '.join(sorted(actual))} target"
                                )
                                break
                        if not matched:
                            break
        groups.append(found if matched else None)
    for req in metadata.get("exclude", []):
        if len(detections.get(req["class"], [])) >= req["count"]:
            reasons.append(f"expected {req['class']}<{req['count']}, found {len(detections[req['class']])}")
    return not reasons, reasons


def summarize(records: list[dict], tasks: Sequence[str]) -> dict:
    """Per-task accuracy, overall = unweighted task mean, % correct images, % prompts with a correct image."""
    by_task = {t: [r["correct"] for r in records if r["tag"] == t] for t in tasks}
    by_task = {t: v for t, v in by_task.items() if v}
    per_task = {t: float(np.mean(v)) for t, v in by_task.items()}
    prompts: dict[str, bool] = {}
    for r in records:
        prompts[r["prompt_id"]] = prompts.get(r["prompt_id"], False) or r["correct"]
    return {
        "per_task": per_task,
        "overall": float(np.mean(list(per_task.values()))) if per_task else 0.0,
        "correct_images": float(np.mean([r["correct"] for r in records])) if records else 0.0,
        "correct_prompts": float(np.mean(list(prompts.values()))) if prompts else 0.0,
        "images": len(records),
        "prompts": len(prompts),
    }

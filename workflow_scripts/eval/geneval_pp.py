"""GenEval++ (Echo-4o) as published: item lines, the checklist a judge reads, verdicts and scores.

A benchmark item is one line of the official ``Geneval++.jsonl`` (280 lines, 7 tags x 40):
``{"tag", "prompt", "include": [{"class", "count", "color"?, "region"?, "size"?}], "exclude"?: [...]}``.
Every item gets one image, keyed by its 1-based line number. A judge reads the item as a checklist and
answers a JSON verdict ``{"correct": 0|1, "reason": ...}``; a reply without one is asked again, up to
three attempts, after which the item is wrong, as is an item whose image is missing. Score per tag =
correct / items of the tag; Overall = the mean of the tag accuracies.

Two judges consume the same checklist clauses (:func:`clauses`): a local VLM (:mod:`.vlm_judge`, reading
the rendered text) and, in the shapes world, :class:`ShapesJudge`, which checks each clause exactly on
the rendered shapes. The shapes judge reads a clause as a strict evaluator would: exactly ``count``
objects of the class (with the colour, when given) in the image, all of them in the region, when given;
every object of a ``larger`` clause bigger (box area) than every object of a ``smaller`` one; an exclude
clause allows at most ``count - 1`` objects of its class.
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
from workflow_scripts.eval.geneval import COLORS, NUMBERS, plural
from workflow_scripts.seeding import derive_seed

# in the official file's order
TAGS = (
    "color_attr",
    "spatial_count_attr",
    "color_spatial_attr",
    "color_count_attr",
    "multi_object_count_attr",
    "size_spatial_attr",
    "counting",
)
# the four tags the UAE paper's Table 3 prints, by its column names
PAPER_COLUMNS = {
    "color_attr": "Color",
    "counting": "Count",
    "color_count_attr": "Color/Count",
    "spatial_count_attr": "Pos/Count",
}
LINE_KEYS = ("tag", "prompt", "include", "exclude")  # an item line's keys
REGIONS = ("above", "below", "left", "right")
SIZES = ("larger", "smaller")
ATTEMPTS = 3  # official: a reply without a JSON verdict is asked again, three times in all
MAX_NEW_TOKENS = 200  # official
OFFICIAL_JUDGE = "GPT-4.1"
SHAPES_JUDGE = "shapes-world scene judge (exact)"
ITEMS_KEY = "eval.geneval_pp.items_file"


# --- items ----------------------------------------------------------------------------------------
def _check_clause(clause, where: str, *, exclude: bool) -> None:
    if not isinstance(clause, dict):
        raise ValueError(f"{where}: a clause must be an object, got {clause!r}")
    if not isinstance(clause.get("class"), str) or not clause["class"]:
        raise ValueError(f"{where}: a clause needs a 'class' name, got {clause!r}")
    count = clause.get("count", 1)
    if not isinstance(count, int) or isinstance(count, bool) or count < (2 if exclude else 1):
        raise ValueError(f"{where}: 'count' must be an integer >= {2 if exclude else 1}, got {count!r}")
    allowed = {"class", "count"} if exclude else {"class", "count", "color", "region", "size"}
    unknown = set(clause) - allowed
    if unknown:
        raise ValueError(f"{where}: unknown clause keys {sorted(unknown)} (allowed: {sorted(allowed)})")
    for key, values in (("color", COLORS), ("region", REGIONS), ("size", SIZES)):
        if key in clause and clause[key] not in values:
            raise ValueError(f"{where}: '{key}' must be one of {list(values)}, got {clause[key]!r}")


def check_item(item, where: str) -> dict:
    """One line of the item file, validated; ``where`` names it in the error."""
    if not isinstance(item, dict):
        raise ValueError(f"{where}: a line must be a JSON object")
    if item.get("tag") not in TAGS:
        raise ValueError(f"{where}: 'tag' must be one of {list(TAGS)}, got {item.get('tag')!r}")
    if not isinstance(item.get("prompt"), str) or not item["prompt"].strip():
        raise ValueError(f"{where}: 'prompt' must be a non-empty string")
    include = item.get("include")
    if not isinstance(include, list) or not include:
        raise ValueError(f"{where}: 'include' must be a non-empty list of clauses")
    for clause in include:
        _check_clause(clause, where, exclude=False)
    for clause in item.get("exclude", []):
        _check_clause(clause, where, exclude=True)
    return {k: item[k] for k in LINE_KEYS if k in item}


def parse_items(text: str, source: str) -> list[dict]:
    """Item lines (the official file's format). Blank lines are skipped and, as in the official script,
    not counted: item n is the n-th non-blank line; errors name the file's own line number."""
    items = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{source}, line {number}"
        try:
            raw = json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(f"{where}: not JSON ({error})") from None
        items.append(check_item(raw, where))
    if not items:
        raise ValueError(f"{source}: no items")
    return items


def read_items(path: str | Path) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"config key '{ITEMS_KEY}': {path} does not exist (the official Geneval++.jsonl)")
    return parse_items(path.read_text(), f"{ITEMS_KEY} {path}")


def outside_shapes_world(items_file: str | Path) -> list[str]:
    """Classes of an item file that the shapes-world judge cannot judge (they need a VLM judge)."""
    classes = {c.cls for item in read_items(items_file) for c in clauses(item)}
    return sorted(classes - set(scenes.SHAPES))


def _name(count: int, cls: str, color: str | None = None) -> str:
    """'three red circles', 'one square'."""
    noun = plural(cls) if count > 1 else cls
    return " ".join(w for w in (NUMBERS[count], color, noun) if w)


def _article(words: str) -> str:
    return f"an {words}" if words[0] in "aeiou" else f"a {words}"


def _listing(parts: list[str]) -> str:
    return " and ".join(parts) if len(parts) < 3 else ", ".join(parts[:-1]) + ", and " + parts[-1]


_PLACE = {"left": "on the left", "right": "on the right", "above": "at the top", "below": "at the bottom"}


def build_items(
    per_tag: int,
    seed: int,
    classes: Sequence[str] = scenes.SHAPES,
    colors: Sequence[str] = COLORS,
) -> list[dict]:
    """Items in the official format for all seven tags, ``per_tag`` each, from the shapes world's classes
    and colours; the counts, clause shapes and region/size pairs follow the official file's."""
    rng = np.random.default_rng(seed)
    classes, colors = list(classes), list(colors)

    def pick(values: list, k: int) -> list:
        return [values[i] for i in rng.choice(len(values), size=k, replace=False)]

    def count(low: int, high: int) -> int:
        return int(rng.integers(low, high, endpoint=True))

    def sides() -> tuple[str, str]:
        return ("left", "right") if rng.random() < 0.5 else ("above", "below")

    items = []
    for tag in TAGS:
        for _ in range(per_tag):
            if tag == "color_attr":
                names = pick(classes, 3 if rng.random() < 0.75 else 4)
                include = [
                    {"class": c, "count": 1, "color": k}
                    for c, k in zip(names, pick(colors, len(names)), strict=True)
                ]
                prompt = _listing([_article(f"{c['color']} {c['class']}") for c in include])
            elif tag == "spatial_count_attr":
                names, places = pick(classes, 2), sides()
                include = [
                    {"class": c, "count": count(1, 3), "region": r}
                    for c, r in zip(names, places, strict=True)
                ]
                prompt = " and ".join(
                    f"{_name(c['count'], c['class'])} {_PLACE[c['region']]}" for c in include
                )
            elif tag == "color_spatial_attr":
                names, places = pick(classes, 2), sides()
                include = [
                    {"class": c, "count": 1, "color": k, "region": r}
                    for c, k, r in zip(names, pick(colors, 2), places, strict=True)
                ]
                prompt = " and ".join(
                    f"{_article(c['color'] + ' ' + c['class'])} {_PLACE[c['region']]}" for c in include
                )
            elif tag == "color_count_attr":
                names = pick(classes, 2)
                include = [
                    {"class": c, "count": count(1, 3), "color": k}
                    for c, k in zip(names, pick(colors, 2), strict=True)
                ]
                prompt = " and ".join(_name(c["count"], c["class"], c["color"]) for c in include)
            elif tag == "multi_object_count_attr":
                names = pick(classes, 2 if rng.random() < 0.5 else 3)
                include = [{"class": c, "count": count(1, 3)} for c in names]
                prompt = _listing([_name(c["count"], c["class"]) for c in include])
            elif tag == "size_spatial_attr":
                names, places = pick(classes, 2), sides()
                include = [
                    {"class": c, "count": 1, "size": s, "region": r}
                    for c, s, r in zip(names, SIZES, places, strict=True)
                ]
                prompt = " and ".join(
                    f"{_article(c['size'] + ' ' + c['class'])} {_PLACE[c['region']]}" for c in include
                )
            else:
                (name,) = pick(classes, 1)
                n = count(4, 7)
                include = [{"class": name, "count": n}]
                items.append(
                    {
                        "tag": tag,
                        "include": include,
                        "exclude": [{"class": name, "count": n + 1}],
                        "prompt": f"A photo of {_name(n, name)}",
                    }
                )
                continue
            items.append({"tag": tag, "include": include, "prompt": f"A photo of {prompt}"})
    return items


def item_set(metadata: list[dict], seed: int, bench: str = "geneval_pp") -> list[dict]:
    """Bench items keyed by their 1-based line number, one generation seed each."""
    return [
        {"item_id": str(line), "line": line, **m, "seed": derive_seed(seed, bench, line)}
        for line, m in enumerate(metadata, start=1)
    ]


# --- the checklist --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Clause:
    cls: str
    count: int
    color: str | None = None
    region: str | None = None
    size: str | None = None
    exclude: bool = False

    def text(self) -> str:
        """The official wording of one checklist bullet (without the bullet)."""
        noun = self.cls + "s" if self.count > 1 else self.cls
        if self.exclude:
            return f"No more than {self.count - 1} {noun} should appear"
        described = " ".join(w for w in (f"{self.color}-colored" if self.color else None, self.size) if w)
        thing = f"{described} {self.count} {noun}" if described else f"{self.count} {noun}"
        where = f"located in the {self.region} part of the image" if self.region else "present in the image"
        return f"{thing} {where}"


def clauses(item: dict) -> list[Clause]:
    include = [
        Clause(c["class"], c.get("count", 1), c.get("color"), c.get("region"), c.get("size"))
        for c in item.get("include", [])
    ]
    exclude = [Clause(c["class"], c.get("count", 1), exclude=True) for c in item.get("exclude", [])]
    return include + exclude


def checklist(item: dict) -> str:
    return "This image should contain:\n" + "\n".join(f"- {c.text()}." for c in clauses(item))


# --- verdicts -------------------------------------------------------------------------------------
def parse_verdict(reply: str) -> dict | None:
    """The first JSON object of a reply (bare, inside a ```json fence, or amid prose) if it carries a
    verdict: ``correct`` 0 or 1 (a JSON boolean counts too). None: ask again."""
    decoder = json.JSONDecoder()
    for match in re.finditer(r"\{", reply):
        try:
            found, _ = decoder.raw_decode(reply, match.start())
        except json.JSONDecodeError:
            continue
        if not isinstance(found, dict):
            continue
        correct = found.get("correct")
        if correct not in (0, 1) or isinstance(correct, float):
            return None  # the first object is the verdict; a malformed one is no verdict
        return {"correct": int(correct), "reason": str(found.get("reason", ""))}
    return None


Judge = Callable[[dict, Image.Image], str]  # (item, image) -> the judge's reply text


def judge_item(judge: Judge, item: dict, image_path: str | Path | None) -> dict:
    """One item's verdict: the image judged up to ATTEMPTS times until a reply parses; a missing image or
    no parsable reply is wrong."""
    if image_path is None or not Path(image_path).is_file():
        return {"correct": 0, "reason": "image not found", "outcome": "missing image", "replies": []}
    with Image.open(image_path) as opened:
        image = opened.convert("RGB")
    replies = []
    for _ in range(ATTEMPTS):
        replies.append(judge(item, image))
        verdict = parse_verdict(replies[-1])
        if verdict is not None:
            return {**verdict, "outcome": "judged", "replies": replies}
    return {
        "correct": 0,
        "reason": f"no JSON verdict in {ATTEMPTS} attempts",
        "outcome": "unparsable",
        "replies": replies,
    }


def summarize(results: list[dict]) -> dict:
    """Per tag: correct / items; Overall = mean of the tag accuracies (official), beside the accuracy
    over all items (equal when tags are balanced)."""
    tags = [t for t in TAGS if any(r["tag"] == t for r in results)]
    counts = {
        t: {
            "correct": sum(int(r["correct"] == 1) for r in results if r["tag"] == t),
            "items": sum(1 for r in results if r["tag"] == t),
        }
        for t in tags
    }
    per_task = {t: c["correct"] / c["items"] for t, c in counts.items()}
    return {
        "per_task": per_task,
        "counts": counts,
        "overall": float(np.mean(list(per_task.values()))) if per_task else 0.0,
        "all_items": sum(c["correct"] for c in counts.values()) / max(len(results), 1),
        "images": sum(1 for r in results if r["outcome"] != "missing image"),
        "missing_images": sum(1 for r in results if r["outcome"] == "missing image"),
        "unparsable": sum(1 for r in results if r["outcome"] == "unparsable"),
    }


OFFICIAL_ITEMS = 280


def item_protocol(spec, items: int) -> dict:
    """The item set's part of the protocol record (``spec``: the GenEval++ config)."""
    if spec.items_file:
        deviations = [] if items == OFFICIAL_ITEMS else [f"{items} items (the official file has 280)"]
        return {"benchmark_protocol": "official items", "deviations": deviations}
    return {
        "benchmark_protocol": "shapes-world items",
        "deviations": [
            f"{items} shapes-world items in the official format ({spec.items_per_tag} per tag), "
            "not the official 280"
        ],
    }


def score_protocol(items: dict, judge: str) -> dict:
    """The score record's protocol: the item set's, plus the judge, which is never the official one."""
    return {
        "benchmark_protocol": items.get("benchmark_protocol", "unknown item set"),
        "judge": judge,
        "detector": None,  # a VLM or the scene judge decides; no detector rules
        "deviations": [*items.get("deviations", []), f"judge: {judge}, not the official {OFFICIAL_JUDGE}"],
    }


# --- generation -----------------------------------------------------------------------------------
def draw(item: dict, items_dir: Path, system, cfg, images: Path, bench: str) -> list[dict]:
    """One image per item, named by its line number."""
    (picture,) = system.draw([item["prompt"]], [item["seed"]], cfg.geneval_pp.resolution)
    name = f"{item['line']}.png"
    picture.save(images / name)
    return [
        {
            "item_id": item["item_id"],
            "line": item["line"],
            "seed": item["seed"],
            "tag": item["tag"],
            "prompt": item["prompt"],
            "output": f"images/{name}",
        }
    ]


# --- the shapes world's exact judge ---------------------------------------------------------------
@dataclass(frozen=True)
class Seen:
    """One object found in an image: class, colour, box centre and box area as fractions of the image."""

    cls: str
    color: str
    x: float
    y: float
    area: float


def _in_region(obj: Seen, region: str) -> bool:
    return {"left": obj.x < 0.5, "right": obj.x > 0.5, "above": obj.y < 0.5, "below": obj.y > 0.5}[region]


def unmet(checks: list[Clause], seen: list[Seen]) -> list[str]:
    """The clauses ``seen`` fails, in words (empty: the image satisfies the checklist)."""
    failures, scaled = [], {"larger": [], "smaller": []}
    for clause in checks:
        if clause.exclude:
            found = sum(1 for o in seen if o.cls == clause.cls)
            if found >= clause.count:
                failures.append(f"expected no more than {clause.count - 1} {clause.cls}, found {found}")
            continue
        label = " ".join(w for w in (clause.color, clause.cls) if w)
        matching = [o for o in seen if o.cls == clause.cls and clause.color in (None, o.color)]
        if len(matching) != clause.count:
            failures.append(f"expected {clause.count} {label}, found {len(matching)}")
            continue
        outside = [o for o in matching if clause.region and not _in_region(o, clause.region)]
        if outside:
            failures.append(f"{len(outside)} {label} not in the {clause.region} part of the image")
        if clause.size:
            scaled[clause.size].extend(matching)
    larger, smaller = scaled["larger"], scaled["smaller"]
    if larger and smaller and min(o.area for o in larger) <= max(o.area for o in smaller):
        failures.append("the larger object is not larger than the smaller one")
    return failures


class ShapesJudge:
    """Exact judge of shapes-world images: finds every object (class, colour, box) and checks the clauses;
    its reply is a verdict in the VLM's JSON form, so both judges go through the same parsing."""

    name = SHAPES_JUDGE

    def __init__(self) -> None:
        from workflow_scripts.eval.detectors import PaletteColors, ShapesDetector

        self.detector, self.colors = ShapesDetector(), PaletteColors()

    def objects(self, image: Image.Image) -> list[Seen]:
        width, height = image.size
        seen = []
        for cls, detections in self.detector(image).items():
            for det, color in zip(detections, self.colors(image, cls, detections), strict=True):
                x0, y0, x1, y1 = det.box
                seen.append(
                    Seen(
                        cls,
                        color,
                        (x0 + x1 + 1) / 2 / width,
                        (y0 + y1 + 1) / 2 / height,
                        (x1 - x0 + 1) * (y1 - y0 + 1) / (width * height),
                    )
                )
        return seen

    def __call__(self, item: dict, image: Image.Image) -> str:
        unknown = {c.cls for c in clauses(item)} - set(self.detector.classes)
        if unknown:
            raise ValueError(
                f"the shapes-world judge knows only {list(self.detector.classes)}, not {sorted(unknown)}: "
                "set eval.geneval_pp.judge_path to a local VLM directory to judge these items"
            )
        failures = unmet(clauses(item), self.objects(image))
        return json.dumps(
            {"correct": int(not failures), "reason": "; ".join(failures) or "every expectation holds"}
        )

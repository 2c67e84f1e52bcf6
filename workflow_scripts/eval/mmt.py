"""MMT-Bench fine-grained perception probes (Table 4): multiple choice, known answers, robust extraction.

Tiny preset: probes built from procedural scenes whose answers are exact. Paper preset: MMT-Bench's TSV
(index, image in base64, question, options A-D, answer, category) from a local path. Person
re-identification has no counterpart among shapes; its probe asks which object appears in both halves
of a two-scene image (object re-identification).
"""

from __future__ import annotations

import base64
import csv
import re
import sys
from collections.abc import Callable

import numpy as np
from PIL import Image

from workflow_scripts.data import scenes
from workflow_scripts.data.images import decode, png_bytes
from workflow_scripts.geometry import relative_position

TASKS = ("small_object", "reidentification", "color", "texture", "spatial")
LETTERS = "ABCD"


def prompt(question: str, options: list[str]) -> str:
    lines = [question, *(f"{LETTERS[i]}. {o}" for i, o in enumerate(options))]
    return "\n".join(lines) + "\nAnswer with the option's letter from the given choices directly."


def extract(text: str, options: list[str]) -> str | None:
    """The option a free-form answer picks, or None when it is ambiguous.

    In order: a bare letter ('B', '(B)', 'B.'), a leading letter ('B. red', 'B) red'), 'answer is B' /
    'Answer: B', then the text of exactly one option (whole words, case-insensitive).
    """
    letters = LETTERS[: len(options)]
    stripped = text.strip()
    bare = re.fullmatch(rf"\(?([{letters}])\)?[.:]?", stripped)
    if bare:
        return bare.group(1)
    leading = re.match(rf"\(?([{letters}])[\).:]\s", stripped + " ")
    if leading:
        return leading.group(1)
    stated = re.search(rf"answer(?: is|:)?\s*\(?([{letters}])\b", stripped, flags=re.IGNORECASE)
    if stated:
        return stated.group(1).upper()
    named = [
        letters[i]
        for i, o in enumerate(options)
        if re.search(rf"\b{re.escape(o.lower())}\b", stripped.lower())
    ]
    return named[0] if len(named) == 1 else None


def rotations(options: list[str], answer: str) -> list[tuple[list[str], str]]:
    """CircularEval: the options shifted k = 0..n-1 places, with the answer's letter moved along."""
    n = len(options)
    index = LETTERS.index(answer)
    return [([options[(i + k) % n] for i in range(n)], LETTERS[(index - k) % n]) for k in range(n)]


def _distinct_objects(rng, count: int) -> list[scenes.SceneObject]:
    """Solid objects with pairwise different (colour, shape), laid out without overlap."""
    for _ in range(200):
        scene = scenes.sample_scene(rng, min_objects=count, max_objects=count, textures=["solid"])
        if len({(o.color, o.shape) for o in scene.objects}) == count:
            return list(scene.objects)
    raise RuntimeError("could not draw distinct objects")


def _name(obj: scenes.SceneObject) -> str:
    return f"{obj.color} {obj.shape}"


def _shuffled(rng, correct: str, distractors: list[str]) -> tuple[list[str], str]:
    """Four options: the correct one and three distinct distractors, in random order."""
    pool = sorted(set(distractors) - {correct})
    options = [correct, *rng.choice(pool, size=3, replace=False).tolist()]
    options = [options[i] for i in rng.permutation(4)]
    return options, LETTERS[options.index(correct)]


def _resized(obj: scenes.SceneObject, size: str) -> scenes.SceneObject:
    side = scenes.SIZES[size]
    x0, y0 = obj.box[0], obj.box[1]
    return scenes.SceneObject(obj.shape, obj.color, obj.texture, size, (x0, y0, x0 + side, y0 + side))


def _small_object(rng, resolution: int) -> dict:
    objs = [_resized(o, "small" if i == 0 else o.size) for i, o in enumerate(_distinct_objects(rng, 4))]
    objs = [objs[0], *(o if o.size != "small" else _resized(o, "medium") for o in objs[1:])]
    options = [_name(o) for o in objs]
    options = [options[i] for i in rng.permutation(4)]
    return {
        "question": "Which object in the image is the smallest?",
        "options": options,
        "answer": LETTERS[options.index(_name(objs[0]))],
        "image": scenes.render(scenes.Scene("light grey", tuple(objs)), resolution),
    }


def _reidentification(rng, resolution: int) -> dict:
    left, right = _distinct_objects(rng, 2), _distinct_objects(rng, 2)
    shared = left[0]
    right[0] = scenes.SceneObject(shared.shape, shared.color, shared.texture, shared.size, right[0].box)
    if len({_name(o) for o in left + right}) != 3:
        return _reidentification(rng, resolution)
    half = resolution // 2
    canvas = Image.new("RGB", (resolution, resolution))
    canvas.paste(
        scenes.render(scenes.Scene("light grey", tuple(left)), half).resize((half, resolution)), (0, 0)
    )
    canvas.paste(
        scenes.render(scenes.Scene("pale blue", tuple(right)), half).resize((half, resolution)), (half, 0)
    )
    distractors = [_name(left[1]), _name(right[1])] + [
        f"{c} {s}" for c in ("red", "blue") for s in ("star", "cross")
    ]
    options, answer = _shuffled(rng, _name(shared), distractors)
    return {
        "question": "Which object appears in both the left and the right half of the image?",
        "options": options,
        "answer": answer,
        "image": canvas,
    }


def _color(rng, resolution: int) -> dict:
    target, other = _distinct_objects(rng, 2)
    if target.shape == other.shape:
        return _color(rng, resolution)
    options, answer = _shuffled(rng, target.color, list(scenes.COLORS))
    return {
        "question": f"What colour is the {target.shape}?",
        "options": options,
        "answer": answer,
        "image": scenes.render(scenes.Scene("light grey", (target, other)), resolution),
    }


def _texture(rng, resolution: int) -> dict:
    target, other = _distinct_objects(rng, 2)
    texture = str(rng.choice(scenes.TEXTURES))
    target = scenes.SceneObject(target.shape, target.color, texture, target.size, target.box)
    target = _resized(target, "large") if target.size == "small" else target
    options = [scenes.TEXTURES[i] for i in rng.permutation(len(scenes.TEXTURES))]
    return {
        "question": f"What pattern fills the {_name(target)}?",
        "options": options,
        "answer": LETTERS[options.index(texture)],
        "image": scenes.render(scenes.Scene("light grey", (target, other)), resolution),
    }


def _spatial(rng, resolution: int) -> dict:
    target, other = _distinct_objects(rng, 2)
    relations = relative_position(target.box, other.box)
    if len(relations) != 1:
        return _spatial(rng, resolution)
    options = [("left of", "right of", "above", "below")[i] for i in rng.permutation(4)]
    return {
        "question": f"Where is the {_name(target)} relative to the {_name(other)}?",
        "options": options,
        "answer": LETTERS[options.index(relations.pop())],
        "image": scenes.render(scenes.Scene("light grey", (target, other)), resolution),
    }


PROBES = {
    "small_object": _small_object,
    "reidentification": _reidentification,
    "color": _color,
    "texture": _texture,
    "spatial": _spatial,
}


def build_probes(per_task: int, seed: int, resolution: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    probes = []
    for task in TASKS:
        for i in range(per_task):
            probe = PROBES[task](rng, resolution)
            probes.append({"item_id": f"{task}-{i:04d}", "task": task, **probe})
    return probes


def read_tsv(path: str, categories: dict[str, str]) -> list[dict]:
    """MMT-Bench's TSV rows of the configured categories, as probes."""
    csv.field_size_limit(sys.maxsize)
    wanted = {v: k for k, v in categories.items()}
    probes = []
    with open(path, newline="") as handle:
        for row in csv.DictReader(handle, delimiter="\t"):
            task = wanted.get(row.get("category", ""))
            if task is None:
                continue
            options = [row[c] for c in LETTERS if row.get(c)]
            # upright, as every user image: a camera photo's EXIF orientation is applied (images.decode)
            decoded = decode(base64.b64decode(row["image"]))
            if decoded.image is None:
                raise ValueError(
                    f"eval.mmt.tsv: {path}: the image of row index {row['index']} cannot be read "
                    f"({decoded.error}): fix or drop that row"
                )
            image = decoded.image
            probes.append(
                {
                    "item_id": f"{task}-{row['index']}",
                    "task": task,
                    "question": row["question"],
                    "options": options,
                    "answer": row["answer"].strip(),
                    "image": image,
                }
            )
    if not probes:
        raise ValueError(f"eval.mmt.tsv: {path} has no rows of categories {sorted(wanted)}")
    return probes


def score(
    records: list[dict], circular: bool, judge: Callable[[str, str, list[str]], str | None] | None = None
) -> tuple[list[dict], dict]:
    """Each record gets 'choice' and 'correct'; a question with rotations is right only if all are."""
    for record in records:
        choice = extract(record["answer_text"], record["options"])
        how = "rule"
        if choice is None and judge is not None:
            choice, how = judge(record["question"], record["answer_text"], record["options"]), "judge"
        record.update(choice=choice, extraction=how if choice else "none", correct=choice == record["answer"])
    questions: dict[str, list[bool]] = {}
    for record in records:
        questions.setdefault(record["item_id"], []).append(record["correct"])
    task_of = {r["item_id"]: r["task"] for r in records}
    per_task: dict[str, list[bool]] = {}
    for item, results in questions.items():
        per_task.setdefault(task_of[item], []).append(all(results) if circular else results[0])
    accuracy = {t: float(np.mean(v)) for t, v in per_task.items()}
    return records, {
        "per_task": accuracy,
        "overall": float(np.mean(list(accuracy.values()))) if accuracy else 0.0,
        "questions": len(questions),
        "circular": circular,
    }


def image_bytes(probe: dict) -> bytes:
    return png_bytes(probe["image"])

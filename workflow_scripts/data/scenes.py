"""The procedural shapes world: scenes with an exact scene graph, rendered to RGB and described in full.

Later benchmarks reuse it: its scene graphs are the ground truth of the tiny preset's GenEval-style
prompts, fine-grained probes and caption judge.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image, ImageDraw

from workflow_scripts.geometry import region, relative_position

COLORS: dict[str, tuple[int, int, int]] = {
    # GenEval's ten colour names, each drawn as one clear sRGB value
    "red": (220, 30, 30),
    "orange": (245, 135, 20),
    "yellow": (245, 215, 30),
    "green": (40, 160, 60),
    "blue": (35, 75, 215),
    "purple": (125, 50, 175),
    "pink": (245, 135, 190),
    "brown": (130, 80, 35),
    "black": (20, 20, 20),
    "white": (250, 250, 250),
}
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "light grey": (190, 190, 190),
    "beige": (215, 200, 170),
    "pale blue": (175, 195, 215),
}
SHAPES = ("circle", "square", "triangle", "star", "hexagon", "diamond", "cross", "ring")
TEXTURES = ("solid", "striped", "dotted", "checkered")
SIZES: dict[str, float] = {"small": 0.16, "medium": 0.24, "large": 0.34}  # box side / canvas side
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")


@dataclass(frozen=True)
class SceneObject:
    shape: str
    color: str
    texture: str
    size: str
    box: tuple[float, float, float, float]  # normalised x0, y0, x1, y1

    def phrase(self) -> str:
        texture = "" if self.texture == "solid" else f" {self.texture}"
        return f"{self.size} {self.color}{texture} {self.shape}"


@dataclass(frozen=True)
class Scene:
    background: str
    objects: tuple[SceneObject, ...]

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Scene:
        data = json.loads(text)
        objects = tuple(SceneObject(**{**o, "box": tuple(o["box"])}) for o in data["objects"])
        return cls(background=data["background"], objects=objects)


def sample_scene(
    rng: np.random.Generator,
    *,
    classes: tuple[str, ...] | list[str] = SHAPES,
    colors: tuple[str, ...] | list[str] = tuple(COLORS),
    textures: tuple[str, ...] | list[str] = TEXTURES,
    sizes: tuple[str, ...] | list[str] = tuple(SIZES),
    min_objects: int = 1,
    max_objects: int = 4,
) -> Scene:
    """Draw a scene whose objects do not overlap (boxes kept 2% apart). Objects are placed one by one;
    when the ones placed leave no room for the next (five large ones can), placement starts over."""
    for name, values, known in (
        ("classes", classes, SHAPES),
        ("colors", colors, COLORS),
        ("textures", textures, TEXTURES),
        ("sizes", sizes, SIZES),
    ):
        unknown = set(values) - set(known)
        if unknown:
            raise ValueError(f"unknown {name} {sorted(unknown)}; known: {list(known)}")
    count = int(rng.integers(min_objects, max_objects + 1))
    background = str(rng.choice(list(BACKGROUNDS)))
    objects: list[SceneObject] = []
    attempts, restarts = 0, 0
    while len(objects) < count:
        attempts += 1
        if attempts > 1000:
            restarts += 1
            if restarts > 100:
                raise RuntimeError(
                    f"could not place {count} objects of sizes {list(sizes)} without overlap; lower "
                    "data.sources.synthetic.max_objects or drop 'large' from its sizes"
                )
            objects, attempts = [], 0
            continue
        size = str(rng.choice(list(sizes)))
        side = SIZES[size]
        x0, y0 = rng.uniform(0.03, 0.97 - side, size=2)
        box = (float(x0), float(y0), float(x0 + side), float(y0 + side))
        if any(_overlap(box, o.box, margin=0.02) for o in objects):
            continue
        objects.append(
            SceneObject(
                shape=str(rng.choice(list(classes))),
                color=str(rng.choice(list(colors))),
                texture=str(rng.choice(list(textures))),
                size=size,
                box=box,
            )
        )
    return Scene(background=background, objects=tuple(objects))


def _overlap(a, b, margin: float) -> bool:
    return not (
        a[2] + margin <= b[0] or b[2] + margin <= a[0] or a[3] + margin <= b[1] or b[3] + margin <= a[1]
    )


def shape_mask(shape: str, side: int) -> Image.Image:
    """Binary mask ('L') of one shape filling a side x side box."""
    mask = Image.new("L", (side, side), 0)
    draw = ImageDraw.Draw(mask)
    s = side - 1
    if shape == "circle":
        draw.ellipse((0, 0, s, s), fill=255)
    elif shape == "square":
        draw.rectangle((int(0.08 * s), int(0.08 * s), int(0.92 * s), int(0.92 * s)), fill=255)
    elif shape == "triangle":
        draw.polygon([(s / 2, 0), (s, s), (0, s)], fill=255)
    elif shape == "diamond":
        draw.polygon([(s / 2, 0), (s, s / 2), (s / 2, s), (0, s / 2)], fill=255)
    elif shape == "hexagon":
        draw.polygon(_regular_polygon(6, s, rotation=0.0), fill=255)
    elif shape == "star":
        draw.polygon(_star(s), fill=255)
    elif shape == "cross":
        a, b = s / 3, 2 * s / 3
        draw.rectangle((a, 0, b, s), fill=255)
        draw.rectangle((0, a, s, b), fill=255)
    elif shape == "ring":
        draw.ellipse((0, 0, s, s), fill=255)
        draw.ellipse((0.3 * s, 0.3 * s, 0.7 * s, 0.7 * s), fill=0)
    else:
        raise ValueError(f"unknown shape {shape!r}")
    return mask


def _regular_polygon(n: int, s: float, rotation: float) -> list[tuple[float, float]]:
    r = s / 2
    return [
        (r + r * math.cos(rotation + 2 * math.pi * k / n), r + r * math.sin(rotation + 2 * math.pi * k / n))
        for k in range(n)
    ]


def _star(s: float) -> list[tuple[float, float]]:
    r_out, r_in = s / 2, s / 5
    points = []
    for k in range(10):
        r = r_out if k % 2 == 0 else r_in
        angle = -math.pi / 2 + math.pi * k / 5
        points.append((s / 2 + r * math.cos(angle), s / 2 + r * math.sin(angle)))
    return points


def pattern_shade(color: str) -> tuple[float, float, float]:
    """The darker tone stripes, dots and checks are drawn in: a shade of the object's own colour, so
    its colour name stays unambiguous (black gets a dark grey)."""
    if color == "black":
        return (90.0, 90.0, 90.0)
    return tuple(0.55 * c for c in COLORS[color])


def _texture(color: str, texture: str, side: int) -> Image.Image:
    base = np.array(COLORS[color], dtype=np.float32)
    accent = np.array(pattern_shade(color), dtype=np.float32)
    yy, xx = np.mgrid[0:side, 0:side]
    period = max(side // 6, 4)
    if texture == "solid":
        pattern = np.zeros((side, side), bool)
    elif texture == "striped":
        pattern = ((xx + yy) // (period // 2)) % 2 == 1
    elif texture == "dotted":
        cy = (yy % period) - period / 2
        cx = (xx % period) - period / 2
        pattern = cx**2 + cy**2 <= (period / 4) ** 2
    elif texture == "checkered":
        pattern = ((xx // period) + (yy // period)) % 2 == 1
    else:
        raise ValueError(f"unknown texture {texture!r}")
    pixels = np.where(pattern[..., None], accent, base)
    return Image.fromarray(pixels.astype(np.uint8), "RGB")


def render(scene: Scene, canvas: int) -> Image.Image:
    image = Image.new("RGB", (canvas, canvas), BACKGROUNDS[scene.background])
    for obj in scene.objects:
        x0, y0 = round(obj.box[0] * canvas), round(obj.box[1] * canvas)
        side = max(round((obj.box[2] - obj.box[0]) * canvas), 4)
        image.paste(_texture(obj.color, obj.texture, side), (x0, y0), shape_mask(obj.shape, side))
    return image


def _plural(word: str) -> str:
    return word + ("es" if word.endswith(("s", "x", "sh", "ch")) else "s")


def _count_phrase(n: int, noun: str) -> str:
    word = NUMBER_WORDS[n] if n < len(NUMBER_WORDS) else str(n)
    return f"{word} {noun if n == 1 else _plural(noun)}"


def _join(parts: list[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def describe(scene: Scene) -> str:
    """An exact long caption: inventory, then every object's look and place, then pairwise layout."""
    objs = scene.objects
    groups: dict[tuple[str, str], int] = {}
    for o in objs:
        groups[(o.color, o.shape)] = groups.get((o.color, o.shape), 0) + 1
    inventory = _join([_count_phrase(n, f"{c} {s}") for (c, s), n in groups.items()])
    total = _count_phrase(len(objs), "shape")
    sentences = [
        f"A flat digital illustration of {total} on a plain {scene.background} background.",
        f"The picture contains {inventory}.",
    ]
    for o in objs:
        pattern = {
            "solid": "filled with a single flat colour",
            "striped": f"covered in diagonal darker {o.color} stripes",
            "dotted": f"covered in small darker {o.color} dots",
            "checkered": f"filled with a darker {o.color} checkerboard pattern",
        }[o.texture]
        sentences.append(
            f"A {o.size} {o.color} {o.shape}, {pattern}, sits in the {region(o.box)} of the image."
        )
    names = [o.phrase() for o in objs]
    unique = [names.count(n) == 1 for n in names]
    for i in range(len(objs)):
        for j in range(i + 1, len(objs)):
            if not (unique[i] and unique[j]):
                continue
            relations = sorted(relative_position(objs[i].box, objs[j].box))
            if relations:
                sentences.append(f"The {names[i]} is {' and '.join(relations)} the {names[j]}.")
    if len(objs) == 1:
        sentences.append("Nothing else is in the image.")
    return " ".join(sentences)

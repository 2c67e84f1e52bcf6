"""Issue 19's measuring instruments (eval/learning.py) on hand-made inputs: the shapes-world
reconstruction checker, caption recall, their derangement floors and the autoencoder ceiling, and
GenEval's floor. Every expected number is worked out by hand in the test."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFilter

from workflow_scripts.data import scenes
from workflow_scripts.eval import learning, score
from workflow_scripts.eval.detectors import PaletteColors, ShapesDetector
from workflow_scripts.eval.geneval import TASKS, ScoringConstants

Obj = scenes.SceneObject
GREY = "light grey"
SIDE = 64  # the tiny preset's bench resolution


def scene(*objects: Obj, background: str = GREY) -> scenes.Scene:
    return scenes.Scene(background, tuple(objects))


RED_CIRCLE_UL = Obj("circle", "red", "solid", "large", (0.05, 0.05, 0.39, 0.39))
BLUE_SQUARE_LR = Obj("square", "blue", "striped", "medium", (0.60, 0.60, 0.84, 0.84))
TWO = scene(RED_CIRCLE_UL, BLUE_SQUARE_LR)


def check(image: Image.Image, graph: scenes.Scene) -> learning.Verdict:
    return learning.check_reconstruction(image, graph, ShapesDetector(), learning.InteriorColors())


def test_the_rendered_scene_passes_with_every_shape_right():
    verdict = check(scenes.render(TWO, SIDE), TWO)
    assert verdict == learning.Verdict(True, verdict.reason, objects=2, found=2, shapes_right=2)
    assert verdict.reason == "all 2 object(s) found: right colour in the right place"


def test_a_wrong_colour_fails_and_says_which_object():
    green = scene(Obj("circle", "green", "solid", "large", RED_CIRCLE_UL.box), BLUE_SQUARE_LR)
    verdict = check(scenes.render(green, SIDE), TWO)
    assert not verdict.passed and (verdict.found, verdict.shapes_right) == (1, 1)  # the blue square
    assert verdict.reason == "red circle expected at upper left, no red object found"


def test_swapped_sides_fail_and_name_where_the_colour_was_found():
    swapped = scene(
        Obj("circle", "red", "solid", "large", (0.60, 0.60, 0.94, 0.94)),
        Obj("square", "blue", "striped", "medium", (0.05, 0.05, 0.29, 0.29)),
    )
    verdict = check(scenes.render(swapped, SIDE), TWO)
    assert not verdict.passed and verdict.found == 0
    assert verdict.reason == (
        "red circle expected at upper left, red found only at lower right; "
        "blue square expected at lower right, blue found only at upper left"
    )


def test_the_tolerance_is_a_tenth_of_the_side_around_the_box():
    """The object's box spans x 0.30..0.46, so a detection centre up to x 0.46 + 0.1 = 0.56 counts:
    a small red circle drawn centred at x 0.38 (in place) or 0.55 is found, one at 0.66 is not."""
    graph = scene(Obj("circle", "red", "solid", "small", (0.30, 0.40, 0.46, 0.56)))
    for centre, found in ((0.38, True), (0.55, True), (0.66, False)):
        drawn = scene(Obj("circle", "red", "solid", "small", (centre - 0.08, 0.40, centre + 0.08, 0.56)))
        assert check(scenes.render(drawn, SIDE), graph).passed is found, centre


def test_two_objects_of_one_colour_need_two_detections():
    left = Obj("circle", "red", "solid", "medium", (0.05, 0.30, 0.29, 0.54))
    right = Obj("square", "red", "solid", "medium", (0.65, 0.30, 0.89, 0.54))
    verdict = check(scenes.render(scene(left), SIDE), scene(left, right))
    assert not verdict.passed and verdict.found == 1
    assert verdict.reason == "red square expected at middle right, no red object found"


def test_a_blank_image_fails():
    blank = Image.new("RGB", (SIDE, SIDE), scenes.BACKGROUNDS[GREY])
    verdict = check(blank, TWO)
    assert not verdict.passed and verdict.reason.endswith("; no object detected")


def test_a_blurred_small_object_is_named_by_its_interior():
    """A small red star blurred by 1 px (a 27.6 dB reconstruction at 64 px): its blended rim outvotes
    its core, so the whole mask reads as another colour; the interior still reads red."""
    star = scene(Obj("star", "red", "solid", "small", (0.40, 0.40, 0.56, 0.56)))
    blurred = scenes.render(star, SIDE).filter(ImageFilter.GaussianBlur(1))
    rim = learning.check_reconstruction(blurred, star, ShapesDetector(), PaletteColors())
    assert rim.reason == "red star expected at centre, no red object found"
    assert check(blurred, star).passed


def test_checker_calibration_on_sampled_scenes():
    """100 sampled 1-4-object scenes at 64 px (the numbers InteriorColors' docstring quotes): every
    exact render passes, 1 % of renders pass against the next scene's graph (the floor), and of the
    renders blurred by 1 px the interior rule passes 75 %, the whole-mask palette 54 %."""
    rng = np.random.default_rng(0)
    graphs = [scenes.sample_scene(rng, min_objects=1, max_objects=4) for _ in range(100)]
    renders = [scenes.render(g, SIDE) for g in graphs]
    detector, interior, palette = ShapesDetector(), learning.InteriorColors(), PaletteColors()

    def rate(images, against, colors) -> float:
        verdicts = [
            learning.check_reconstruction(i, g, detector, colors)
            for i, g in zip(images, against, strict=True)
        ]
        return sum(v.passed for v in verdicts) / len(verdicts)

    assert rate(renders, graphs, interior) == 1.0
    assert rate(renders, graphs[1:] + graphs[:1], interior) == 0.01
    blurred = [r.filter(ImageFilter.GaussianBlur(1)) for r in renders]
    assert (rate(blurred, graphs, interior), rate(blurred, graphs, palette)) == (0.75, 0.54)


def test_derangement_never_keeps_an_item_in_place():
    assert learning.derangement(3) == [1, 2, 0]
    assert learning.derangement(1) == [] and learning.derangement(0) == []


@pytest.mark.parametrize(
    "caption, expected",
    [
        (None, (1.0, 1.0)),  # the scene's exact description (scenes.describe)
        ("a red circle", (0.5, 0.5)),
        ("Two BLUE squares and red circles.", (1.0, 1.0)),  # case, plurals
        ("a reddish circular blob", (0.0, 0.0)),  # whole words only
        ("a square on a plain pale blue background", (0.0, 0.5)),  # the background's blue is no object
        ("green triangles", (0.0, 0.0)),
    ],
)
def test_caption_recall(caption, expected):
    text = scenes.describe(TWO) if caption is None else caption
    assert learning.caption_recall(text, TWO) == expected


def test_caption_recall_counts_each_distinct_word_once_and_matches_irregular_plurals():
    crosses = scene(
        Obj("cross", "red", "solid", "small", (0.05, 0.05, 0.21, 0.21)),
        Obj("cross", "red", "dotted", "small", (0.6, 0.6, 0.76, 0.76)),
        Obj("ring", "white", "solid", "small", (0.05, 0.6, 0.21, 0.76)),
    )
    assert learning.caption_recall("two red crosses", crosses) == (0.5, 0.5)
    assert learning.caption_recall("red crosses around a white ring", crosses) == (1.0, 1.0)


def _bench(tmp_path: Path, graphs: list[scenes.Scene | None], drawn: list[Image.Image], captions: list[str]):
    """An item set (originals rendered from the graphs; None: a photograph) and one system's records."""
    (tmp_path / "images").mkdir()
    (tmp_path / "out").mkdir()
    items, records = [], []
    for k, (graph, picture, caption) in enumerate(zip(graphs, drawn, captions, strict=True)):
        name = f"{k:05d}.png"
        meta = {"scene": json.loads(graph.to_json())} if graph else {}
        (scenes.render(graph, SIDE) if graph else picture).save(tmp_path / "images" / name)
        picture.save(tmp_path / "out" / name)
        items.append({"item_id": f"{k:05d}", "image": name, "meta": meta})
        records.append(
            {"item_id": f"{k:05d}", "input": name, "caption": caption, "output": str(tmp_path / "out" / name)}
        )
    return items, records


def test_unified_bench_rates_floors_and_ceiling(tmp_path):
    """Three scenes: A (red circle upper left + blue square lower right), B (green triangle upper
    right), C (yellow star lower left). Redrawn: A right, B right, C as A. Floors judge A's drawing
    against B, B's against C, C's (= A's picture) against A."""
    b = scene(Obj("triangle", "green", "solid", "large", (0.60, 0.05, 0.94, 0.39)))
    c = scene(Obj("star", "yellow", "solid", "large", (0.05, 0.60, 0.39, 0.94)))
    photo = Image.new("RGB", (SIDE, SIDE), (10, 120, 30))
    drawn = [scenes.render(TWO, SIDE), scenes.render(b, SIDE), scenes.render(TWO, SIDE), photo]
    captions = ["a red circle and a blue square", "a green triangle", "a yellow circle", "a photo"]
    items, records = _bench(tmp_path, [TWO, b, c, None], drawn, captions)
    calls = []

    def identity():
        calls.append(1)
        return lambda pictures: pictures  # a perfect autoencoder: the ceiling is the originals' score

    records, summary = learning.unified_bench(records, items, tmp_path / "images", identity)
    assert [r["checker"] for r in records] == ["pass", "pass", "fail", None]  # the photo: no verdict
    assert all(set(learning.RECORD_KEYS) <= set(r) for r in records)  # one parquet schema for all rows
    assert records[2]["checker_reason"] == "yellow star expected at lower left, no yellow object found"
    checker = summary["checker"]
    assert checker["images"] == 3 and checker["rate"] == pytest.approx(2 / 3)
    # found objects: A 2 (both shapes right), B 1 (right), C 0 -> 3 / 3
    assert checker["shape_accuracy"] == 1.0
    # floors: A's drawing vs B fails, B's vs C fails, C's drawing (A's picture) vs A passes
    assert checker["floor"] == {"rate": pytest.approx(1 / 3), "shape_accuracy": 1.0}
    assert checker["ceiling"] == {"rate": 1.0, "shape_accuracy": 1.0} and calls == [1]
    # caption recall: A (1, 1), B (1, 1), C (colour 1, shape 0) -> colour 1, shape 2/3
    captions_summary = summary["captions"]
    assert captions_summary["color_recall"] == 1.0
    assert captions_summary["shape_recall"] == pytest.approx(2 / 3)
    # floors: A's caption vs B (0, 0); B's vs C (0, 0); C's ("a yellow circle") vs A (0, 1/2)
    assert captions_summary["floor"]["color_recall"] == 0.0
    assert captions_summary["floor"]["shape_recall"] == pytest.approx(1 / 6)
    assert [r.get("color_recall") for r in records] == [1.0, 1.0, 1.0, None]


def test_no_scene_graph_means_no_checker_and_no_autoencoder(tmp_path):
    photo = Image.new("RGB", (SIDE, SIDE), (10, 120, 30))
    items, records = _bench(tmp_path, [None], [photo], ["a photo"])
    _, summary = learning.unified_bench(records, items, tmp_path / "images", lambda: pytest.fail("loaded"))
    assert summary == {}


def _geneval_record(tmp_path: Path, item_id: str, tag: str, include: list[dict], graph: scenes.Scene):
    path = tmp_path / f"{item_id}.png"
    scenes.render(graph, SIDE).save(path)
    metadata = {"tag": tag, "include": include, "prompt": item_id}
    return {"item_id": item_id, "tag": tag, "metadata": json.dumps(metadata), "output": str(path)}


def test_geneval_floor_judges_each_image_against_another_prompt_of_its_task(tmp_path):
    """single_object: prompt 0 'a circle' drawn as circle + square, prompt 1 'a square' drawn as a
    square; colors: prompt 2 'a red circle' and prompt 3 'a blue circle', each drawn right; position has
    one prompt (no floor). All five images are right; floors: 0's picture against 'a square' passes,
    1's against 'a circle' fails (single_object 0.5); 2's against 'blue circle' and 3's against 'red
    circle' fail (colors 0.0); overall floor = mean of the two tasks = 0.25."""
    square = Obj("square", "blue", "solid", "medium", (0.6, 0.6, 0.84, 0.84))
    circle = Obj("circle", "red", "solid", "medium", (0.1, 0.1, 0.34, 0.34))
    blue_circle = Obj("circle", "blue", "solid", "medium", (0.1, 0.1, 0.34, 0.34))
    records = [
        _geneval_record(
            tmp_path, "00000", "single_object", [{"class": "circle", "count": 1}], scene(circle, square)
        ),
        _geneval_record(tmp_path, "00001", "single_object", [{"class": "square", "count": 1}], scene(square)),
        _geneval_record(
            tmp_path, "00002", "colors", [{"class": "circle", "count": 1, "color": "red"}], scene(circle)
        ),
        _geneval_record(
            tmp_path,
            "00003",
            "colors",
            [{"class": "circle", "count": 1, "color": "blue"}],
            scene(blue_circle),
        ),
        _geneval_record(tmp_path, "00004", "position", [{"class": "square", "count": 1}], scene(square)),
    ]
    records, summary = score.generation(records, ShapesDetector(), PaletteColors(), ScoringConstants(), TASKS)
    assert [r["correct"] for r in records] == [True] * 5
    assert [r["floor_correct"] for r in records] == [True, False, False, False, None]
    assert summary["overall"] == 1.0  # the official overall is untouched
    assert summary["floor"] == {
        "overall": 0.25,
        "per_task": {"single_object": 0.5, "colors": 0.0},
        "tasks": 2,
    }


@pytest.mark.slow  # builds a tiny SD3 decoder (5-15 s on 2 cores)
def test_the_ceiling_draws_through_the_decoders_own_vae(tmp_path):
    """The ceiling's encode -> decode is the decoder's own latent round trip (Decoder.to_latents, then
    to_pixels: scaling and shift cancel), and an adapter-only directory's VAE is its base's."""
    import torch
    from diffusers import AutoencoderKL

    from workflow_scripts.config.loader import parse, resolve
    from workflow_scripts.models.decoder import FORMAT_FILE, Decoder
    from workflow_scripts.reward.pixels import to_pil, to_unit
    from workflow_scripts.tiny import uae as tiny

    spec = parse(resolve({"preset": "tiny"})).models.decoder.tiny
    tiny.build_decoder(spec, 0, tmp_path / "base")
    adapter = tmp_path / "rl" / "final"
    adapter.mkdir(parents=True)
    (adapter / FORMAT_FILE).write_text(json.dumps({"format_version": 1, "base": "../../base"}))
    autoencode = learning.system_autoencoder({"decoder": str(adapter)}, torch.device("cpu"), torch.float32)
    pictures = [scenes.render(TWO, SIDE), scenes.render(TWO, 32)]
    redrawn = autoencode(pictures)
    assert [p.size for p in redrawn] == [(SIDE, SIDE), (32, 32)]
    decoder = Decoder(None, AutoencoderKL.from_pretrained(tmp_path / "base" / "vae"), None, None, None)
    for picture, ours in zip(pictures, redrawn, strict=True):
        with torch.no_grad():
            reference = decoder.to_pixels(decoder.to_latents(to_unit([picture]) * 2 - 1))
        assert to_pil(reference)[0].tobytes() == ours.tobytes()
    assert learning.system_autoencoder({"captioner": "x"}, torch.device("cpu"), torch.float32) is None

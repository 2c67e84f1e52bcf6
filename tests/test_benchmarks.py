"""Benchmark recipes and scorers against hand-made expectations."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch

from workflow_scripts.data import scenes
from workflow_scripts.eval import geneval, judge, mmt
from workflow_scripts.eval.detectors import PaletteColors, ShapesDetector
from workflow_scripts.eval.geneval import Detection, ScoringConstants

OFFICIAL_SHA256 = (
    "f23de0226e3f1136e39efa732c76a34ca7703686c30edd999019223c5fe9a98f"  # prompts/evaluation_metadata.jsonl
)


def test_geneval_recipe_reproduces_the_official_553_prompts():
    items = geneval.geneval_prompts(list(geneval.COCO_CLASSES))
    assert len(items) == 553
    counts = {t: sum(i["tag"] == t for i in items) for t in geneval.TASKS}
    assert counts["single_object"] == 80
    text = "\n".join(json.dumps(i) for i in items)
    assert hashlib.sha256(text.encode()).hexdigest() == OFFICIAL_SHA256
    assert items[0]["prompt"] == "a photo of a bench"
    assert not any(
        i["tag"] in ("colors", "color_attr") and c["class"] == "person" for i in items for c in i["include"]
    )


def test_geneval_articles_and_plurals():
    assert geneval.with_article("apple") == "an apple" and geneval.with_article("cat") == "a cat"
    assert geneval.plural("bus") == "buses" and geneval.plural("circle") == "circles"


def _obj(shape, color, x, y, size=0.24, texture="solid"):
    return scenes.SceneObject(shape, color, texture, "medium", (x, y, x + size, y + size))


def _score(metadata: dict, *objects) -> tuple[bool, list[str]]:
    image = scenes.render(scenes.Scene("light grey", tuple(objects)), 200)
    detections = geneval.keep(ShapesDetector()(image), metadata["tag"], ScoringConstants())
    colors = PaletteColors()
    return geneval.evaluate(metadata, detections, lambda cls, dets: colors(image, cls, dets))


def test_detector_finds_every_shape_colour_and_box():
    objects = [
        _obj(shape, color, 0.02 + 0.24 * (i % 4), 0.05 + 0.5 * (i // 4), size=0.2, texture=texture)
        for i, (shape, color, texture) in enumerate(
            zip(
                scenes.SHAPES,
                ["red", "orange", "yellow", "green", "blue", "purple", "pink", "brown"],
                ["solid", "striped", "dotted", "checkered"] * 2,
                strict=True,
            )
        )
    ]
    image = scenes.render(scenes.Scene("beige", tuple(objects)), 256)
    found = ShapesDetector()(image)
    assert sorted(found) == sorted(scenes.SHAPES)
    for obj in objects:
        (det,) = found[obj.shape]
        assert det.score > 0.9
        x0, y0, x1, y1 = (c * 256 for c in obj.box)
        assert x0 - 2 <= det.box[0] and det.box[2] <= x1 + 2 and y0 - 2 <= det.box[1] and det.box[3] <= y1 + 2
        assert det.box[2] - det.box[0] >= 0.8 * (x1 - x0)  # a square fills 84% of its box side
        assert PaletteColors()(image, obj.shape, [det]) == [obj.color]


def test_geneval_counting_pass_and_exact_failures():
    meta = {
        "tag": "counting",
        "include": [{"class": "circle", "count": 2}],
        "exclude": [{"class": "circle", "count": 3}],
    }
    assert _score(meta, _obj("circle", "red", 0.05, 0.1), _obj("circle", "red", 0.6, 0.1)) == (True, [])
    assert _score(meta, _obj("circle", "red", 0.05, 0.1)) == (False, ["expected circle>=2, found 1"])
    three = [_obj("circle", "red", x, 0.1) for x in (0.05, 0.37, 0.69)]
    assert _score(meta, *three) == (False, ["expected circle<3, found 3"])


def test_geneval_color_pass_and_exact_failure():
    meta = {"tag": "colors", "include": [{"class": "star", "count": 1, "color": "blue"}]}
    assert _score(meta, _obj("star", "blue", 0.3, 0.3)) == (True, [])
    assert _score(meta, _obj("star", "green", 0.3, 0.3)) == (
        False,
        ["expected blue star>=1, found 0 blue; and 1 green"],
    )


def test_geneval_position_pass_and_exact_failures():
    meta = {
        "tag": "position",
        "include": [
            {"class": "triangle", "count": 1},
            {"class": "square", "count": 1, "position": ["left of", 0]},
        ],
    }
    assert _score(meta, _obj("square", "red", 0.05, 0.4), _obj("triangle", "blue", 0.7, 0.4)) == (True, [])
    assert _score(meta, _obj("square", "red", 0.7, 0.4), _obj("triangle", "blue", 0.05, 0.4)) == (
        False,
        ["expected square left of target, found right of target"],
    )
    assert _score(meta, _obj("square", "red", 0.05, 0.4)) == (
        False,
        ["expected triangle>=1, found 0", "no target for square to be left of"],
    )


def test_geneval_color_attribution_and_two_objects():
    meta = {
        "tag": "color_attr",
        "include": [
            {"class": "ring", "count": 1, "color": "pink"},
            {"class": "cross", "count": 1, "color": "black"},
        ],
    }
    assert _score(meta, _obj("ring", "pink", 0.1, 0.1), _obj("cross", "black", 0.6, 0.6)) == (True, [])
    swapped = _score(meta, _obj("ring", "black", 0.1, 0.1), _obj("cross", "pink", 0.6, 0.6))
    assert swapped == (
        False,
        [
            "expected pink ring>=1, found 0 pink; and 1 black",
            "expected black cross>=1, found 0 black; and 1 pink",
        ],
    )


def test_keep_applies_thresholds_order_and_limits():
    dets = {"circle": [Detection((0, 0, 1, 1), s) for s in (0.2, 0.95, 0.5, 0.91)]}
    assert [d.score for d in geneval.keep(dets, "colors", ScoringConstants())["circle"]] == [0.95, 0.91, 0.5]
    assert [d.score for d in geneval.keep(dets, "counting", ScoringConstants())["circle"]] == [0.95, 0.91]
    assert len(geneval.keep(dets, "colors", ScoringConstants(max_objects=1))["circle"]) == 1


def test_summary_is_the_unweighted_mean_of_tasks():
    records = [
        {"tag": "colors", "correct": c, "prompt_id": f"a{i}"}
        for i, c in enumerate([True, True, False, False])
    ]
    records += [{"tag": "position", "correct": True, "prompt_id": "b"}]
    summary = geneval.summarize(records, geneval.TASKS)
    assert summary["per_task"] == {"colors": 0.5, "position": 1.0}
    assert (
        summary["overall"] == 0.75 and summary["correct_images"] == 0.6 and summary["correct_prompts"] == 0.6
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("B", "B"),
        ("(C)", "C"),
        ("D.", "D"),
        ("A. red circle", "A"),
        ("The answer is C", "C"),
        ("Answer: b", "B"),
        ("answer: B", "B"),
        ("It is the blue star.", "B"),
        ("red or blue", None),
        ("", None),
        ("E", None),
    ],
)
def test_answer_extraction_rules(text, expected):
    assert mmt.extract(text, ["red circle", "blue star", "green ring", "black cross"]) == expected


def test_circular_evaluation_needs_every_rotation():
    rotations = mmt.rotations(["a", "b", "c", "d"], "B")
    assert rotations[1] == (["b", "c", "d", "a"], "A")
    assert all(options[ord(answer) - 65] == "b" for options, answer in rotations)
    base = {"item_id": "q", "task": "color", "question": "?"}
    records = [{**base, "options": o, "answer": a, "answer_text": a} for o, a in rotations]
    records[2]["answer_text"] = "A"  # one rotation wrong
    _, strict = mmt.score([dict(r) for r in records], circular=True)
    _, single = mmt.score([dict(r) for r in records], circular=False)
    assert strict["per_task"] == {"color": 0.0} and single["per_task"] == {"color": 1.0}


def test_built_probes_have_the_stated_answers():
    probes = mmt.build_probes(3, seed=0, resolution=128)
    assert [p["task"] for p in probes] == [t for t in mmt.TASKS for _ in range(3)]
    detector = ShapesDetector()
    for probe in (p for p in probes if p["task"] == "color"):
        shape = probe["question"].removeprefix("What colour is the ").rstrip("?")
        (det,) = detector(probe["image"])[shape]
        assert PaletteColors()(probe["image"], shape, [det]) == [
            probe["options"]["ABCD".index(probe["answer"])]
        ]


def test_scene_graph_judge_hand_values_and_order_consistency():
    scene = scenes.Scene("beige", (_obj("circle", "red", 0.1, 0.1), _obj("star", "blue", 0.6, 0.6)))
    assert judge.mentioned_objects("Two red circles and a blue dotted star.") == {
        ("red", "circle"),
        ("blue", "star"),
    }
    assert judge.scene_f1("a red circle and a blue star", scene) == 1.0
    assert judge.scene_f1("a red circle and a green ring", scene) == pytest.approx(0.5)  # p = 1/2, r = 1/2
    meta = {"scene": json.loads(scene.to_json())}
    exact = judge.scene_graph_judge(margin=0.02)
    assert judge.compare(exact, None, meta, "a red circle and a blue star", "a red circle")[2] == "win"
    assert judge.compare(exact, None, meta, "a red circle", "a red circle")[2] == "tie"
    always_first = lambda image, meta, a, b: "first"  # noqa: E731 - an order-biased judge
    assert judge.compare(always_first, None, meta, "x", "y") == ("first", "first", "tie")
    assert judge.summarize(["win", "win", "tie", "loss"]) == {
        "win": 50.0,
        "tie": 25.0,
        "loss": 25.0,
        "items": 4,
    }


def test_reconstruction_reward_is_the_rl_alphas_over_the_backbone_columns():
    from workflow_scripts.eval import score

    records = [{"clip": 90.0, "dinov2": 60.0, "dinov3": 1.0}, {"clip": 80.0, "dinov2": 40.0, "dinov3": 1.0}]
    summary = score.reconstruction_reward(records, {"clip": 0.5, "dinov2": 0.25})
    assert [r["reward"] for r in records] == [60.0, 50.0]  # 0.5 x 90 + 0.25 x 60; 0.5 x 80 + 0.25 x 40
    assert summary == {"reward": 55.0, "reward_alphas": {"clip": 0.5, "dinov2": 0.25}}
    # a bench configured without a reward backbone scores no reward and says which key to change
    fresh = [{"clip": 90.0}]
    unscored = score.reconstruction_reward(fresh, {"clip": 0.5, "longclip": 0.5})
    assert "reward" not in unscored and "reward" not in fresh[0]
    assert "names ['longclip'], which eval.unified_bench.backbones" in unscored["reward_unscored"]


def test_unified_bench_scores_identical_images_100(tmp_path):
    from PIL import Image

    from workflow_scripts.config.loader import parse, resolve
    from workflow_scripts.eval import score
    from workflow_scripts.reward.backbones import load_backbone
    from workflow_scripts.tiny.backbones import build_tiny

    cfg = parse(resolve({}))
    backbones = {}
    for name in ("clip", "dinov3"):
        build_tiny(name, getattr(cfg.models.reward, name).tiny, 0, tmp_path / name)
        backbones[name] = load_backbone(name, tmp_path / name)
    (tmp_path / "images").mkdir()
    picture = scenes.render(scenes.sample_scene(np.random.default_rng(0)), 64)
    other = Image.fromarray(np.random.default_rng(1).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    picture.save(tmp_path / "images" / "a.png")
    other.save(tmp_path / "b.png")
    Image.open(tmp_path / "images" / "a.png").save(tmp_path / "same.png")
    records = [
        {"input": "a.png", "output": str(tmp_path / "same.png")},
        {"input": "a.png", "output": str(tmp_path / "b.png")},
    ]
    scored, summary = score.unified_bench(records, tmp_path, backbones)
    assert scored[0]["clip"] == pytest.approx(100.0, abs=1e-3) and scored[0]["dinov3"] == pytest.approx(
        100.0, abs=1e-3
    )
    assert scored[1]["clip"] < 99.0
    assert summary["overall"] == pytest.approx(
        np.mean([summary["backbones"][k]["avg"] for k in ("clip", "dinov3")])
    )
    assert summary["backbones"]["clip"]["min"] == pytest.approx(scored[1]["clip"])
    torch.testing.assert_close(
        torch.tensor(summary["backbones"]["clip"]["max"]), torch.tensor(100.0), atol=1e-3, rtol=0
    )

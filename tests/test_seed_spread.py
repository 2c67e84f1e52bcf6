import json

import pytest

from workflow_scripts.eval import seed_spread


def _run(root, name, seed, overall, *, extra=None, systems=("none", "2a")):
    folder = root / name
    config = {"run_name": name, "seed": seed, "preset": "tiny", "eval": {"shards": 1}, **(extra or {})}
    folder.mkdir()
    (folder / "config.resolved.json").write_text(json.dumps(config))
    for offset, system in enumerate(systems):
        out = folder / "eval" / system / "unified_bench"
        out.mkdir(parents=True)
        clip = {"avg": 90.0 + seed, "min": 1, "max": 2}
        scores = {"overall": overall + offset, "backbones": {"clip": clip}}
        (out / "scores.json").write_text(json.dumps(scores))
    return folder


def test_spread_is_max_minus_min_and_gains_are_per_seed(tmp_path, capsys):
    runs = [_run(tmp_path, f"tiny_s{s}", s, v) for s, v in ((0, 98.5), (1, 99.25), (2, 98.75))]
    loaded = seed_spread.load_runs(runs, "unified_bench", ["none", "2a"])
    spread = seed_spread.spread(loaded, "none")
    assert spread["overall"] == pytest.approx(0.75)
    assert spread["clip"] == pytest.approx(2.0)
    assert seed_spread.gains(loaded, "2a", "none")["overall"] == pytest.approx([1.0, 1.0, 1.0])
    assert seed_spread.main([str(r) for r in runs] + ["--system", "none", "--system", "2a"]) == 0
    assert "eval.seed_spread: {unified_bench.overall: 0.7500}" in capsys.readouterr().out  # no reward here


def test_runs_of_different_configs_are_refused_with_the_keys_that_differ(tmp_path):
    a = _run(tmp_path, "a", 0, 98.0)
    b = _run(tmp_path, "b", 1, 98.0, extra={"eval": {"shards": 2}})
    with pytest.raises(ValueError, match=r"differs from .* in \['eval\.shards'\]"):
        seed_spread.load_runs([a, b], "unified_bench", ["none"])


def test_a_shared_seed_and_a_missing_score_name_the_fix(tmp_path, capsys):
    a, b = _run(tmp_path, "a", 0, 98.0), _run(tmp_path, "b", 0, 98.0)
    with pytest.raises(ValueError, match="share a seed"):
        seed_spread.load_runs([a, b], "unified_bench", ["none"])
    c = _run(tmp_path, "c", 1, 98.0, systems=("none",))
    assert seed_spread.main([str(a), str(c), "--system", "none", "--system", "2a"]) == 2
    err = capsys.readouterr().err
    assert "c/eval/2a/unified_bench/scores.json is missing" in err and "--config seed=1 run_name=c" in err

"""bench/bench_overhead.py's measurements run and give finite timings and ratios (not the speed targets:
those are measured by running the bench script, never by timed tests)."""

from __future__ import annotations

import importlib.util
import math
import sys

import pytest
import torch

from tests.conftest import REPO


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_overhead", REPO / "bench" / "bench_overhead.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def setup(bench, tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the script runs: a busy 2-core box is many times slower oversubscribed
    root = tmp_path_factory.mktemp("overhead")
    # one micro-batch of 2 pictures per step keeps each measurement to a fraction of a second
    loop = {"batch_size": 2, "micro_batch_size": 2}
    overrides = {
        "models": {"decoder": {"max_text_tokens": 8}},  # 2b's captions and the fixed-length reading
        "rl": {"encoder": {"max_new_tokens": 4, "reconstruction_steps": 1}, "decoder": {"train_steps": 2}},
    }
    made = bench.tiny_setup(root / "models", overrides=overrides)
    yield bench.with_train_loop(made, **loop), root
    torch.set_num_threads(threads)


def _finite(ratio) -> None:
    for times in (ratio.pipeline, ratio.reference, *ratio.extra.values()):
        assert len(times) == 2 and all(math.isfinite(t) and t > 0 for t in times)
    assert math.isfinite(ratio.value) and ratio.value > 0
    assert "ratio" in ratio.lines("reference")[-1]


def test_training_step_ratio_is_measured(bench, setup):
    made, root = setup
    _finite(bench.train_ratio(made, steps=2, warmup=0, root=root))


@pytest.mark.parametrize("stage", ["2a", "2b"])
def test_rl_step_ratio_is_measured(bench, setup, stage):
    made, root = setup
    _finite(bench.rl_ratio(made, stage, steps=2, warmup=0, root=root))


def test_fixed_cost_of_the_loop_is_measured(bench, setup):
    made, root = setup
    bare, pipeline = bench.fixed_cost(made.cfg.pretrain.decoder.phases[0].loop, 3, root)
    assert all(math.isfinite(t) and t > 0 for t in (bare, pipeline))

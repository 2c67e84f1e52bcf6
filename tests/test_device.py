"""Where frozen models go: one GPU, or every GPU of a node a job holds alone (72B judges, 78B captioner)."""

from __future__ import annotations

import pytest
import torch

from workflow_scripts.harness import device


@pytest.mark.parametrize(
    ("gpus", "tasks_per_node", "expected"),
    [(8, "1", "auto"), (8, "8", None), (1, "1", None), (0, "1", None), (8, None, "auto")],
)
def test_a_model_spreads_over_the_gpus_of_a_node_only_its_task_holds(
    monkeypatch, gpus, tasks_per_node, expected
):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpus > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    if tasks_per_node is None:
        monkeypatch.delenv("SLURM_NTASKS_PER_NODE", raising=False)
    else:
        monkeypatch.setenv("SLURM_NTASKS_PER_NODE", tasks_per_node)
    assert device.spread_device_map() == expected


def test_a_dispatched_model_stays_where_accelerate_put_it():
    spread = torch.nn.Linear(2, 2).train()
    spread.hf_device_map = {"": "cuda:3"}  # as from_pretrained(device_map="auto") leaves it
    moved = []
    spread.to = lambda *a, **k: moved.append(a) or spread  # never called for a dispatched model
    assert device.place(spread, torch.device("cpu")) is spread and not moved and not spread.training
    single = torch.nn.Linear(2, 2)
    assert next(device.place(single, torch.device("meta")).parameters()).is_meta

"""The rule graph figure needs nothing but python3, and a figure never stops the DAG (issue 14 item 1)."""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from tests.conftest import REPO, ci_config, write_config
from workflow_scripts.report import dag
from workflow_scripts.report.__main__ import main

SVG = "{http://www.w3.org/2000/svg}"
# What `snakemake --rulegraph` prints, trimmed: a self-loop (6 -> 6), a cycle through two rules
# (8 -> 11 -> 8, select_checkpoint and rl_decoder) and edges that skip layers (1 -> 0).
RULEGRAPH = """Using workflow specific profile profiles/default for setting default command line arguments.
digraph snakemake_dag {
    graph[bgcolor=white, margin=0];
    node[shape=box, style=rounded, fontname=sans,                 fontsize=10, penwidth=2];
    edge[penwidth=2, color=grey];
	0[label = "all", color = "0.00 0.6 0.85", style="rounded"];
	1[label = "data_build", color = "0.06 0.6 0.85", style="rounded"];
	2[label = "data_collect", color = "0.09 0.6 0.85", style="rounded"];
	6[label = "pretrain_decoder", color = "0.37 0.6 0.85", style="rounded"];
	8[label = "select_checkpoint", color = "0.56 0.6 0.85", style="rounded"];
	11[label = "rl_decoder", color = "0.50 0.6 0.85", style="rounded"];
	21[label = "report <&>", color = "0.41 0.6 0.85", style="rounded"];
	1 -> 0
	2 -> 1
	1 -> 6
	6 -> 6
	6 -> 8
	8 -> 8
	8 -> 11
	11 -> 8
	11 -> 21
	21 -> 0
	2 -> 21
}
"""


def _svg(path: Path) -> ET.Element:
    root = ET.fromstring(path.read_text())  # well-formed XML, or this raises
    assert root.tag == f"{SVG}svg"
    return root


def _labels(root: ET.Element) -> set[str]:
    return {t.text for t in root.iter(f"{SVG}text")}


def test_parse_rulegraph_output():
    graph = dag.parse_dot(RULEGRAPH)
    assert graph.labels["21"] == "report <&>" and len(graph.labels) == 7
    assert ("11", "8") in graph.edges and ("6", "6") in graph.edges and len(graph.edges) == 11
    assert graph.colors["0"].startswith("#") and len(graph.colors["0"]) == 7
    with pytest.raises(ValueError, match="no 'digraph'"):
        dag.parse_dot("Error in rule x")


def test_builtin_layout_draws_every_rule_and_edge_without_overlap():
    graph = dag.parse_dot(RULEGRAPH)
    plan = dag.layout(graph)
    assert len(plan.paths) == 9 and plan.loops == ["6", "8"]  # every edge but the self-loops is a path
    boxes = sorted(plan.boxes.values(), key=lambda b: (b[1], b[0]))
    for (x1, y1, w1), (x2, y2, w2) in itertools.pairwise(boxes):
        if y1 == y2:  # same layer: the boxes (and the gap) do not overlap
            assert x1 + w1 / 2 + dag.NODE_GAP <= x2 - w2 / 2 + 1e-6
    for x, _, w in boxes:
        assert w / 2 <= x <= plan.width - w / 2
    ys = {n: y for n, (_, y, _) in plan.boxes.items()}
    assert ys["2"] < ys["1"] < ys["6"] < ys["8"] < ys["11"] < ys["21"] < ys["0"]  # inputs on top
    root = ET.fromstring(dag.draw(graph))
    assert _labels(root) == set(graph.labels.values())
    assert len(root.findall(f".//{SVG}path[@marker-end]")) == 9 + 2


def test_dag_command_without_graphviz(tmp_path):
    """The report_dag rule's command where no apt package is installed: PATH holds only the venv's bin."""
    bin_dir = Path(sys.executable).parent
    assert shutil.which("dot", path=str(bin_dir)) is None
    write_config(tmp_path, ci_config())
    env = {k: v for k, v in os.environ.items() if k not in ("PATH", "PYTHONPATH")} | {"PATH": str(bin_dir)}
    out = tmp_path / "dag.svg"
    command = ["-m", "workflow_scripts.report", "dag", "--snakefile", REPO / "Snakefile"]
    command += ["--configfile", tmp_path / "config.yaml", "--out", out]
    done = subprocess.run(
        [bin_dir / "python", *command],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "drawn by: builtin" in done.stdout, done.stdout + done.stderr
    labels = _labels(_svg(out))
    assert {"all", "data_build", "pretrain_encoder", "rl_encoder", "eval_score", "report"} <= labels


def test_a_drawing_error_still_writes_a_figure_and_exits_0(tmp_path, monkeypatch):
    monkeypatch.setattr(dag, "snakemake_rulegraph", lambda *a, **k: RULEGRAPH)

    def broken(graph):
        raise RuntimeError("layout exploded <here>")

    monkeypatch.setattr(dag, "layout", broken)
    out = tmp_path / "report" / "dag.svg"
    args = [
        "dag",
        "--snakefile",
        "Snakefile",
        "--configfile",
        "c.yaml",
        "--out",
        str(out),
        "--engine",
        "builtin",
    ]
    assert main(args) == 0
    root = _svg(out)
    assert "DAG figure unavailable: RuntimeError: layout exploded <here>" in _labels(root)

    monkeypatch.setattr(dag.shutil, "which", lambda name: None)  # dot is absent
    assert main([*args[:-1], "dot"]) == 0
    assert any("graphviz's `dot` is not on PATH" in t for t in _labels(_svg(out)))


def test_a_failing_snakemake_still_writes_a_figure(tmp_path):
    out = tmp_path / "dag.svg"
    (tmp_path / "Snakefile").write_text("rule all:\n    input: 'x'\n")  # nothing makes 'x'
    args = ["dag", "--snakefile", str(tmp_path / "Snakefile"), "--configfile", str(tmp_path / "none.yaml")]
    assert main([*args, "--out", str(out)]) == 0
    (first, *_) = sorted(t for t in _labels(_svg(out)) if t.startswith("DAG figure unavailable"))
    assert "snakemake --rulegraph exited with" in first


def test_auto_engine_prefers_dot_and_falls_back(monkeypatch):
    monkeypatch.setattr(dag.shutil, "which", lambda name: None)
    svg, used = dag.render(RULEGRAPH, "auto")
    assert used == "builtin" and "<svg" in svg
    monkeypatch.setattr(dag.shutil, "which", lambda name: "/nonexistent/dot")
    monkeypatch.setattr(
        dag.subprocess, "run", lambda *a, **k: subprocess.CompletedProcess(a, 1, stdout="", stderr="boom")
    )
    assert dag.render(RULEGRAPH, "auto")[1] == "builtin"  # a failing dot falls back too
    with pytest.raises(RuntimeError, match="dot -Tsvg exited with 1"):
        dag.render(RULEGRAPH, "dot")


@pytest.mark.slow
def test_report_dag_rule_without_graphviz(tmp_path):
    """`snakemake report_dag` (the rule that aborted `snakemake all` on a fresh machine) with a PATH that
    holds only the venv's bin: it succeeds and writes the built-in drawing."""
    bin_dir = Path(sys.executable).parent
    write_config(tmp_path, ci_config())
    env = {k: v for k, v in os.environ.items() if k not in ("PATH", "PYTHONPATH")} | {"PATH": str(bin_dir)}
    done = subprocess.run(
        [bin_dir / "python", "-m", "snakemake", "-s", REPO / "Snakefile", "--cores", "1", "report_dag"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    root = _svg(tmp_path / "results/ci/report/dag.svg")
    assert "snakemake --rulegraph, laid out by workflow_scripts.report.dag" in root.find(f"{SVG}desc").text
    assert {"all", "report_dag", "unitoken_train"} <= _labels(root)

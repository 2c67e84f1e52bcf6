"""The report leads with results (issue 14 item 10), rendered against a small synthetic warehouse.

The end-to-end checks on a real run's warehouse are in tests/test_report.py (slow: they need the DAG).
"""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path

import duckdb
import pytest

from workflow_scripts.report.build import render_index, render_run
from workflow_scripts.warehouse.db import replace_rows, writer
from workflow_scripts.warehouse.ingest import paper

SYSTEMS = ("2a", "2a+2b", "none", "unitoken")
BENCHES = ("unified_bench", "geneval", "mmt")  # geneval_pp missing on purpose: its column must not appear
# the report's order: results first, then the details, provenance last
ORDER = (
    "results",
    "gallery",
    "training",
    "tables",
    "recipes",
    "ablation",
    "geneval",
    "selection",
    "data",
    "dag",
    "reproduce",
    "provenance",
)


def _score(run: str, system: str, bench: str, metric: str) -> float:
    return round(10 * SYSTEMS.index(system) + BENCHES.index(bench) + len(metric) / 100 + len(run), 4)


@pytest.fixture(scope="module")
def warehouse(tmp_path_factory) -> Path:
    """Two runs with scores on three benchmarks, 90 jobs and 85 stages (long tables), no samples."""
    db = tmp_path_factory.mktemp("warehouse") / "umm.duckdb"
    with writer(db) as con:
        paper(con)
        for run in ("ci", "other"):
            summary = {"run_id": run, "preset": "tiny", "config_hash": "c0ffee", "config": "{}"}
            summary |= {"config_diff": '{"seed": [0, 1]}', "packages": '{"torch": "2.14.1"}', "seed": 1}
            summary |= {"git_commit": "abc1234", "git_dirty": False, "wall_seconds": 12.5, "gpu_hours": 0.0}
            replace_rows(con, "runs", {"run_id": run}, [summary])
            scores = [
                {"run_id": run, "system": s, "benchmark": b, "metric": m, "value": _score(run, s, b, m)}
                for s in SYSTEMS
                for b in BENCHES
                for m in ("overall", "clip")
            ]
            replace_rows(con, "eval_scores", {"run_id": run}, scores)
            jobs = [
                {"run_id": run, "job_id": str(1000 + i), "name": f"job{i}", "state": "COMPLETED"}
                for i in range(90)
            ]
            replace_rows(con, "jobs", {"run_id": run}, jobs)
            stages = [{"run_id": run, "stage": f"stage_{i:03d}", "wall_seconds": 1.0} for i in range(85)]
            replace_rows(con, "stages", {"run_id": run}, stages)
    return db


@pytest.fixture(scope="module")
def report(warehouse, tmp_path_factory) -> str:
    out = tmp_path_factory.mktemp("report") / "report.html"
    render_run(warehouse, "ci", out.parent, out.parent / "missing-dag.svg", out)
    return out.read_text()


class _Tables(HTMLParser):
    """Every <td data-system=...> cell with the id/class/data-run of the table around it."""

    def __init__(self) -> None:
        super().__init__()
        self.cells: list[tuple[dict, dict, str]] = []
        self._tables: list[dict] = []
        self._cell: dict | None = None

    def handle_starttag(self, tag, attrs):
        if tag == "table":
            self._tables.append(dict(attrs))
        elif tag == "td" and "data-system" in dict(attrs):
            self._cell, self._text = dict(attrs), ""

    def handle_data(self, data):
        if self._cell is not None:
            self._text += data

    def handle_endtag(self, tag):
        if tag == "td" and self._cell is not None:
            self.cells.append((self._tables[-1], self._cell, self._text.strip()))
            self._cell = None
        elif tag == "table":
            self._tables.pop()


def _sql(db: Path, run: str, system: str, bench: str, metric: str) -> str:
    with duckdb.connect(str(db), read_only=True) as con:
        found = con.execute(
            "SELECT value FROM eval_scores WHERE run_id=? AND system=? AND benchmark=? AND metric=?",
            [run, system, bench, metric],
        ).fetchall()
    return "—" if not found else f"{found[0][0]:.3f}"


def check_order_and_details(html: str) -> None:
    """Results before everything else, provenance last; the jobs and stages tables collapsed."""
    positions = [html.find(f'<section id="{s}">') for s in ORDER if f'<section id="{s}">' in html]
    assert positions == sorted(positions) and positions[0] == html.find("<section"), positions
    assert html.find('<section id="results">') < html.find('<table id="jobs">')
    collapsed = re.findall(r"<details(?![^>]*\bopen\b)[^>]*>(.*?)</details>", html, flags=re.S)
    for table in ("jobs", "stages", "config-diff"):
        assert sum(f'<table id="{table}">' in d for d in collapsed) == 1, table
    provenance = html[html.find('<section id="provenance">') :]
    assert provenance.count("<details") == 5


def check_results_table(db: Path, run: str, html: str) -> int:
    parser = _Tables()
    parser.feed(html)
    cells = [(c, t) for table, c, t in parser.cells if table.get("id") == "results-table"]
    for cell, text in cells:
        assert cell["data-metric"] == "overall"
        assert text == _sql(db, run, cell["data-system"], cell["data-bench"], "overall"), cell
    return len(cells)


def check_index(db: Path, html: str) -> int:
    """The index's scores cell is a table per run: rows systems, columns benchmarks, values from SQL."""
    assert "/unified_bench " not in html  # no more run-on "system/bench value" strings
    parser = _Tables()
    parser.feed(html)
    checked = 0
    for table, cell, text in parser.cells:
        assert "scores" in table.get("class", "").split()
        assert text == _sql(db, table["data-run"], cell["data-system"], cell["data-bench"], "overall"), cell
        checked += 1
    with duckdb.connect(str(db), read_only=True) as con:
        expected = con.execute("SELECT count(*) FROM eval_scores WHERE metric = 'overall'").fetchone()[0]
    assert checked == expected
    return checked


def test_report_leads_with_results_and_collapses_provenance(report):
    check_order_and_details(report)
    nav = re.search(r"<nav>(.*?)</nav>", report).group(1)
    assert nav.index("#results") < nav.index("#gallery") < nav.index("#training") < nav.index("#provenance")
    assert "<summary>Jobs (90)</summary>" in report and "<summary>Stages (85)</summary>" in report


def test_results_table_is_paper_vs_ours_per_benchmark(warehouse, report):
    assert check_results_table(warehouse, "ci", report) == len(SYSTEMS) * len(BENCHES)
    (table,) = re.findall(r'<table id="results-table">(.*?)</table>', report, flags=re.S)
    header = re.findall(r"<th[^>]*>(.*?)</th>", table.split("</tr>")[0])
    assert header == ["benchmark", "paper (UAE)", *(f"ours: {s}" for s in SYSTEMS), "Δ 2a+2b"]
    rows = table.split("</tr>")[1:-1]
    assert [re.search(r'href="#paper-(\w+)"', r).group(1) for r in rows] == list(BENCHES)
    # paper (UAE) is the published overall; Δ is the most trained UAE system's score minus it
    with duckdb.connect(str(warehouse), read_only=True) as con:
        (published,) = con.execute(
            "SELECT value FROM paper_tables WHERE table_name='unified_bench' AND method='UAE' "
            "AND metric='overall'"
        ).fetchone()
    cells = re.findall(r"<td[^>]*>(.*?)</td>", rows[0])
    assert cells[1] == f"{published:.3f}"
    assert cells[-1] == f"{_score('ci', '2a+2b', 'unified_bench', 'overall') - published:+.3f}"


def test_index_scores_are_a_table(warehouse, tmp_path):
    out = tmp_path / "index.html"
    render_index(warehouse, out, {"ci": "ci/report/report.html"})
    html = out.read_text()
    assert check_index(warehouse, html) == 2 * len(SYSTEMS) * len(BENCHES)
    (ci,) = re.findall(r'<table class="scores" data-run="ci">(.*?)</table>', html, flags=re.S)
    rows = [r for r in ci.split("</tr>") if "<t" in r]
    assert re.findall(r"<th[^>]*>(.*?)</th>", rows[0]) == ["system", "Unified-Bench", "GenEval", "MMT"]
    assert [re.search(r'<td class="label">(.*?)</td>', r).group(1) for r in rows[1:]] == sorted(SYSTEMS)


def test_a_failing_figure_does_not_fail_the_report(warehouse, tmp_path, monkeypatch):
    from workflow_scripts.report import plots

    def broken(*args, **kwargs):
        raise ValueError("no data to plot")

    monkeypatch.setattr(plots, "histogram", broken)
    out = tmp_path / "report.html"
    render_run(warehouse, "ci", tmp_path, tmp_path / "dag.svg", out)
    assert "Figure 'caption lengths' unavailable: ValueError: no data to plot" in out.read_text()

"""The report's protocol table (issue 17, "Done when"): per system its reader, cold start and
conditioning; per benchmark its protocol, detector and judge, every deviation marked. Built from
hand-made stage records through the real ingests, so the records' "protocol" mappings reach the page."""

from __future__ import annotations

import html
import json
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from workflow_scripts.report.build import render_run
from workflow_scripts.warehouse import ingest
from workflow_scripts.warehouse.db import replace_rows, writer

OWN_SPLIT = "not the official image set (the data build's bench split)"


def _score(run_dir: Path, system: str, bench: str, protocol: dict | None) -> tuple[Path, Path]:
    folder = run_dir / "eval" / system / bench
    folder.mkdir(parents=True)
    pq.write_table(
        pa.Table.from_pylist([{"item_id": "00000", "caption": "a red circle"}]), folder / "r.parquet"
    )
    scores = {"system": system, "benchmark": bench, "overall": 0.5}
    if protocol is not None:
        scores["protocol"] = protocol
    (folder / "scores.json").write_text(json.dumps(scores))
    return folder / "r.parquet", folder / "scores.json"


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> str:
    run_dir = tmp_path_factory.mktemp("run")
    (run_dir / "variants").mkdir()
    uae = {"variant": "2a+2b", "protocol": {"reader": "captioner", "coldstart": "hidden_states"}}
    uae["protocol"]["conditioning"] = "release"
    (run_dir / "variants" / "2a+2b.json").write_text(json.dumps(uae))
    (run_dir / "variants" / "2b.json").write_text(json.dumps({"variant": "2b"}))  # says nothing
    scored = {
        ("2a+2b", "unified_bench"): {
            "benchmark_protocol": "own bench split",
            "detector": None,
            "judge": None,
            "deviations": [OWN_SPLIT],
        },
        ("2a+2b", "geneval"): {
            "benchmark_protocol": "official recipe (553 prompts)",
            "detector": "detr-resnet-101 (boxes only), colour: CLIP zero-shot",
            "judge": None,
            "deviations": ["box-only detector (no masks)"],
        },
        ("2b", "geneval"): {
            "benchmark_protocol": "official recipe (553 prompts)",
            "detector": "Mask2Former m2f (instance masks), colour: CLIP zero-shot",
            "judge": None,
            "deviations": [],
        },
        ("2b", "unified_bench"): None,  # a score written before records carried a protocol
    }
    db = run_dir / "umm.duckdb"
    with writer(db) as con:
        ingest.paper(con)
        summary = {"run_id": "ci", "preset": "paper", "config_hash": "c0ffee", "config": "{}", "seed": 1}
        replace_rows(con, "runs", {"run_id": "ci"}, [summary | {"config_diff": "{}", "packages": "{}"}])
        for (system, bench), protocol in scored.items():
            ingest.evaluation(con, "ci", system, bench, *_score(run_dir, system, bench, protocol))
        assert ingest.systems(con, "ci", run_dir) == 2
    out = run_dir / "report.html"
    render_run(db, "ci", run_dir, run_dir / "missing-dag.svg", out)
    return out.read_text()


def _row(page: str, table: str, marker: str) -> list[str]:
    (body,) = re.findall(rf'<table id="{table}">(.*?)</table>', page, flags=re.S)
    (row,) = [r for r in body.split("</tr>") if marker in r]
    return [
        html.unescape(re.sub(r"<[^>]+>", "", c)).strip()
        for c in re.findall(r"<td[^>]*>(.*?)</td>", row, flags=re.S)
    ]


def test_each_system_states_reader_coldstart_and_conditioning(report):
    assert '<section id="protocol">' in report and 'href="#protocol"' in report
    assert _row(report, "protocol-systems", ">2a+2b<") == ["2a+2b", "captioner", "hidden_states", "release"]
    assert _row(report, "protocol-systems", ">2b<") == ["2b", "—", "—", "—"]


def test_each_benchmark_states_protocol_detector_judge_and_marks_deviations(report):
    def row(system, bench):
        return _row(report, "protocol-benchmarks", f'data-bench="{bench}" data-protocol-system="{system}"')

    assert row("2a+2b", "unified_bench") == [
        "Unified-Bench",
        "2a+2b",
        "own bench split",
        "—",
        "—",
        f"⚠ {OWN_SPLIT}",
    ]
    assert row("2a+2b", "geneval") == [
        "GenEval",
        "2a+2b",
        "official recipe (553 prompts)",
        "detr-resnet-101 (boxes only), colour: CLIP zero-shot",
        "—",
        "⚠ box-only detector (no masks)",
    ]
    assert row("2b", "geneval")[-1] == "none"  # official: nothing to mark
    assert row("2b", "unified_bench")[2:] == ["—", "—", "—", "—"]  # unknown is not "official"


def test_results_table_marks_benchmarks_that_deviate(report):
    (table,) = re.findall(r'<table id="results-table">(.*?)</table>', report, flags=re.S)
    marks = dict(re.findall(r'href="#paper-(\w+)">.*?title="([^"]*)">⚠</a>', table))
    assert set(marks) == {"unified_bench", "geneval"}
    assert "not the official image set" in html.unescape(marks["unified_bench"])
    assert "box-only detector (no masks)" in marks["geneval"]

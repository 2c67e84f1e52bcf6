"""The warehouse after `snakemake all`, and the HTML report a reviewer opens (checked in Chromium)."""

from __future__ import annotations

import re
import shutil
import zipfile
from html.parser import HTMLParser
from pathlib import Path

import duckdb
import pytest

from tests.conftest import snakemake
from tests.test_report_layout import ORDER, check_index, check_order_and_details, check_results_table
from workflow_scripts.report.build import render_compare
from workflow_scripts.warehouse.db import TABLES

pytestmark = pytest.mark.slow
SECTIONS = ORDER  # results first, provenance last (tests/test_report_layout.py)


def _counts(db: Path) -> dict[str, int]:
    with duckdb.connect(str(db), read_only=True) as con:
        return {t: con.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in TABLES}


def _sql(db: Path, sql: str, params=()) -> list[tuple]:
    with duckdb.connect(str(db), read_only=True) as con:
        return con.execute(sql, list(params)).fetchall()


def test_warehouse_has_every_table_and_reingesting_adds_nothing(tiny_dag):
    db = tiny_dag / "results" / "umm.duckdb"
    before = _counts(db)
    assert all(before[t] > 0 for t in TABLES), before
    assert _sql(db, "SELECT count(DISTINCT system) FROM eval_scores WHERE run_id = 'ci'") == [
        (6,)
    ]  # 5 UAE variants + UniToken
    snakemake(
        tiny_dag,
        "all",
        "--forcerun",
        "ingest_data",
        "ingest_training",
        "ingest_eval",
        "ingest_judge",
        "ingest_run",
    )
    assert _counts(db) == before
    assert "Nothing to be done" in snakemake(tiny_dag, "all", "--dry-run").stdout


class _Cells(HTMLParser):
    """Cells carrying data-system/data-metric or data-variant attributes, with their text."""

    def __init__(self) -> None:
        super().__init__()
        self.cells: list[tuple[dict, str]] = []
        self._open: dict | None = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "td" and ("data-system" in attrs or "data-variant" in attrs):
            self._open, self._text = attrs, ""

    def handle_data(self, data):
        if self._open is not None:
            self._text += data

    def handle_endtag(self, tag):
        if tag == "td" and self._open is not None:
            self.cells.append((self._open, self._text.strip()))
            self._open = None


def _check_cells_against_sql(db: Path, html: str) -> int:
    parser = _Cells()
    parser.feed(html)
    checked = 0
    tables = re.findall(r'<table id="ours-(\w+)">(.*?)</table>', html, flags=re.S)
    for bench, body in tables:
        sub = _Cells()
        sub.feed(body)
        for attrs, text in sub.cells:
            rows = _sql(
                db,
                "SELECT value FROM eval_scores WHERE run_id='ci' AND system=? AND benchmark=? AND metric=?",
                (attrs["data-system"], bench, attrs["data-metric"]),
            )
            expected = "—" if not rows else f"{rows[0][0]:.3f}"
            assert text == expected, (bench, attrs, text, expected)
            checked += 1
    (recipes,) = re.findall(r'<table id="recipes-table">(.*?)</table>', html, flags=re.S)
    sub = _Cells()
    sub.feed(recipes)
    assert {a["data-system"] for a, _ in sub.cells} == {"2a+2b", "unitoken"}  # UAE vs UniToken
    assert {a["data-bench"] for a, _ in sub.cells} >= {"unified_bench", "geneval", "geneval_pp", "mmt"}
    for attrs, text in sub.cells:
        rows = _sql(
            db,
            "SELECT value FROM eval_scores WHERE run_id='ci' AND system=? AND benchmark=? AND metric=?",
            (attrs["data-system"], attrs["data-bench"], attrs["data-metric"]),
        )
        assert text == ("—" if not rows else f"{rows[0][0]:.3f}"), (attrs, text)
        checked += 1
    for attrs, text in parser.cells:
        if "data-variant" in attrs:
            (value,) = _sql(
                db,
                "SELECT value FROM eval_scores WHERE run_id='ci' AND system=? AND benchmark='unified_bench' "
                "AND metric='overall'",
                (attrs["data-variant"],),
            )[0]
            assert text == f"{value:.2f}"
            checked += 1
    return checked


def test_report_numbers_are_the_warehouse_values(tiny_dag):
    db = tiny_dag / "results" / "umm.duckdb"
    html = (tiny_dag / "results/ci/report/report.html").read_text()
    assert _check_cells_against_sql(db, html) > 40
    assert 'src="http' not in html and "<link" not in html  # self-contained
    for section in SECTIONS:
        assert f'<section id="{section}">' in html
    check_order_and_details(html)
    assert check_results_table(db, "ci", html) == 4 * 6  # every benchmark x every system
    assert "not comparable" in html  # the tiny preset says so
    index = (tiny_dag / "results/index.html").read_text()
    assert 'href="ci/report/report.html"' in index
    assert check_index(db, index) == 4 * 6


def test_snakemake_report_archive(tiny_dag, tmp_path):
    snakemake(tiny_dag, "all", "--report", str(tmp_path / "report.zip"))
    with zipfile.ZipFile(tmp_path / "report.zip") as archive:
        names = archive.namelist()
    assert any(n.endswith("report.html") for n in names) and any(n.endswith("dag.svg") for n in names)


def test_compare_page_diffs_two_runs(tiny_dag, tmp_path):
    db = tiny_dag / "results" / "umm.duckdb"
    render_compare(db, "ci", "ci", tmp_path / "compare.html")
    html = (tmp_path / "compare.html").read_text()
    assert "identical" in html and "+0.000" in html


@pytest.mark.browser
def test_report_opens_in_chromium_without_errors(tiny_dag, repo):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
    assert chromium and driver_path, (
        "install Debian's chromium and chromium-driver (.ci/run does), or deselect -m 'not browser'"
    )
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-quic",
        "--window-size=1400,1000",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    try:
        driver.get((tiny_dag / "results/ci/report/report.html").resolve().as_uri())
        errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        assert not errors, errors
        images = driver.execute_script(
            "return Array.from(document.images).map(i => [i.complete, i.naturalWidth, i.alt])"
        )
        assert images and all(done and width > 0 for done, width, _ in images), images
        for section in SECTIONS:
            element = driver.find_element("id", section)
            assert len(element.text.strip().splitlines()) >= 2, section
            assert element.find_elements("css selector", "table, svg, pre"), section
        html = driver.page_source
        assert _check_cells_against_sql(tiny_dag / "results" / "umm.duckdb", html) > 40
        height = driver.execute_script("return document.body.scrollHeight")
        driver.set_window_size(1400, min(height, 12000))
        artifacts = repo / "artifacts"
        artifacts.mkdir(exist_ok=True)
        assert driver.save_screenshot(str(artifacts / "report.png"))
    finally:
        driver.quit()

"""`python -m workflow_scripts.progress`: the running stages' tqdm bars, read from their job logs."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import time
from pathlib import Path

from tqdm import tqdm

from workflow_scripts import progress

REPO = Path(__file__).resolve().parent.parent


def _tqdm_log(total: int | None, steps: int, desc: str, postfix: dict | None = None) -> str:
    """What a stage's stderr holds after ``steps`` updates of a real tqdm bar (as the train loop makes)."""
    sink = io.StringIO()
    bar = tqdm(total=total, desc=desc, unit="step", file=sink, mininterval=0, miniters=1)
    for _ in range(steps):
        if postfix:
            bar.set_postfix(postfix, refresh=False)
        bar.update(1)
    return sink.getvalue()  # not closed: the run is still going


def test_the_parser_reads_real_tqdm_output():
    text = "loading model\n" + _tqdm_log(12, 7, "pretrain_encoder", {"loss": 2.5})
    bar = progress.last_bar(text)
    assert (bar.desc, bar.n, bar.total, bar.percent) == ("pretrain_encoder", "7", "12", 58)
    assert bar.rate.endswith("step/s") and bar.postfix == "loss=2.5"
    assert bar.remaining is not None and bar.elapsed == "00:00"

    no_total = progress.last_bar(_tqdm_log(None, 3, "draft captions"))
    assert (no_total.desc, no_total.n, no_total.total, no_total.percent, no_total.remaining) == (
        "draft captions",
        "3",
        None,
        None,
        None,
    )

    # slow steps (s/step), hours, the Unicode bar tqdm draws on a terminal, and a cursor-up escape
    slow = tqdm.format_meter(3, 10, 3725.0, unit="step", prefix="rl_encoder", postfix="reward=0.5")
    assert progress.last_bar(slow) == progress.Bar(
        "rl_encoder", "3", "10", 30, "1:02:05", "2:24:51", "1241.67s/step", "reward=0.5"
    )
    blocks = "\u2588" * 4
    real = f"\rpretrain_encoder: 100%|{blocks}| 12/12 [00:00<00:00, 12.26step/s, loss=6.1]\x1b[A\n"
    assert progress.last_bar("2026 INFO ... started\n" + real).n == "12"
    assert progress.last_bar("no bar here\nsubmitit INFO done\n") is None


def _write(path: Path, text: str, age_s: float = 0.0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    when = time.time() - age_s
    os.utime(path, (when, when))


def _fake_run(root: Path) -> Path:
    run = root / "results" / "tiny"
    jobs = run / "logs" / "jobs"
    # running, local launcher: the bar on stderr, log lines on stdout
    _write(jobs / "pretrain_encoder" / "100_0_log.err", _tqdm_log(150, 40, "pretrain_encoder", {"loss": 2.5}))
    _write(jobs / "pretrain_encoder" / "100_0_log.out", "INFO pretrain_encoder: step 40\n")
    # finished: submitit wrote its result
    _write(jobs / "data_build" / "99_0_log.err", _tqdm_log(5, 5, "data_build"))
    _write(jobs / "data_build" / "99_0_result.pkl", "")
    # a log nobody wrote for an hour (a killed run)
    _write(jobs / "rl_encoder" / "98_0_log.err", _tqdm_log(10, 2, "rl_encoder"), age_s=3600)
    # started, no bar yet
    _write(
        jobs / "eval_generate_none_geneval" / "97_0_log.out",
        "INFO loading the decoder\nsubmitit INFO (2026-11-30 04:22:53,999) - Loading pickle: x.pkl\n",
    )
    # launcher.kind inline: the bar is in the rule's log
    _write(run / "logs" / "rl_decoder.2b.log", _tqdm_log(20, 5, "rl_decoder"))
    # a rule log without a bar (an ingest): not a stage to watch
    _write(run / "logs" / "ingest_data.log", "ingested data for tiny\n")
    _write(root / ".snakemake" / "log" / "2026-11-30T040000.snakemake.log", "5 of 20 steps (25%) done\n")
    return run


def test_running_lists_live_stages_only(tmp_path):
    run = _fake_run(tmp_path)
    entries = {e.stage: e for e in progress.running(run, recent_s=120)}
    assert sorted(entries) == ["eval_generate_none_geneval", "pretrain_encoder", "rl_decoder_2b"]
    assert entries["pretrain_encoder"].bar.n == "40" and entries["pretrain_encoder"].bar.total == "150"
    assert entries["eval_generate_none_geneval"].bar is None
    assert entries["eval_generate_none_geneval"].last_line == "INFO loading the decoder"
    assert "rl_encoder" in {e.stage for e in progress.running(run, recent_s=7200)}


def test_the_command_prints_one_line_per_running_stage(tmp_path):
    run = _fake_run(tmp_path)
    result = subprocess.run(
        [sys.executable, "-m", "workflow_scripts.progress", "--once", "results/tiny"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].endswith("snakemake: 5 of 20 steps (25%) done")
    assert lines[1] == "results/tiny: 3 stage(s) running"
    by_stage = {line.split()[0]: line for line in lines[2:]}
    assert sorted(by_stage) == ["eval_generate_none_geneval", "pretrain_encoder", "rl_decoder_2b"]
    fields = by_stage["pretrain_encoder"].split()
    assert fields[1:3] == ["40/150", "27%"] and "<" in fields[3] and fields[4].endswith("step/s")
    assert fields[-1] == "loss=2.5"
    assert "(rl_decoder)" in by_stage["rl_decoder_2b"] and "5/20" in by_stage["rl_decoder_2b"]
    assert "no progress bar yet" in by_stage["eval_generate_none_geneval"]
    assert run.exists()


def test_a_directory_without_logs_is_named(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "workflow_scripts.progress", "--once", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert result.returncode == 2 and f"{tmp_path} has no logs/ folder" in result.stderr

"""Live progress of a run: one line per running stage (step / total, percent, elapsed<ETA, rate).

    python -m workflow_scripts.progress [RUN_DIR ...] [--once] [--every 2] [--recent 120]

Snakemake's terminal shows job blocks only; the tqdm bars with their ETAs go to each stage's job log
(`<run>/logs/jobs/<stage>/<jobid>_<task>_log.err`, or the rule's own log `<run>/logs/<rule>.log` for
`launcher.kind: inline`). This reads the last bar of every log written in the last ``--recent``
seconds whose job has not finished (submitit writes `<jobid>_<task>_result.pkl` when it has) and
prints them, redrawn in place every ``--every`` seconds (``--once``: print once and exit). Without
RUN_DIR it watches every run under `results/`. It only reads files, so it works in a second terminal
beside `snakemake all`, or on a login node beside `snakemake --profile slurm all`.
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

# tqdm's default layouts, with a total:  "<desc>: 42%|####  | 5/12 [00:01<00:02, 3.10step/s, loss=1.2]"
# and without one:                       "<desc>: 5step [00:01, 3.10step/s, loss=1.2]"
_NUMBER = r"\d+(?:\.\d+)?[kMGTPEZY]?"
_TIME = r"(?:\d+:)?\d+:\d\d"
_WITH_TOTAL = re.compile(
    rf"(?:(?P<desc>.*?): *)?(?P<pct>\d+)%\|[^|]*\| *(?P<n>{_NUMBER})/(?P<total>{_NUMBER}) "
    rf"\[(?P<elapsed>{_TIME})<(?P<remaining>{_TIME}|\?), *(?P<rate>[^,\]]*)(?:, *(?P<postfix>[^\]]*))?\]"
)
_WITHOUT_TOTAL = re.compile(
    rf"(?:(?P<desc>.*?): *)?(?P<n>{_NUMBER})(?P<unit>[^\s\[\d][^\s\[]*) "
    rf"\[(?P<elapsed>{_TIME}), *(?P<rate>[^,\]]*)(?:, *(?P<postfix>[^\]]*))?\]"
)
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_TAIL_BYTES = 64 * 1024  # the last bar is near the end; never read a whole multi-GB log


@dataclass(frozen=True)
class Bar:
    """One tqdm update, as printed."""

    desc: str
    n: str
    total: str | None
    percent: int | None
    elapsed: str
    remaining: str | None  # tqdm's ETA; None without a total, "?" before the rate is known
    rate: str
    postfix: str


@dataclass(frozen=True)
class Running:
    """A stage whose log is being written: which stage, which log, its last bar (None: no bar yet)."""

    stage: str
    log: Path
    age_s: float  # seconds since the log was last written
    bar: Bar | None
    last_line: str


def parse_bar(segment: str) -> Bar | None:
    """The tqdm update in one \\r- or \\n-separated piece of a log, if it holds one."""
    segment = _ANSI.sub("", segment).strip()
    match = _WITH_TOTAL.search(segment)
    if match:
        return Bar(
            desc=(match["desc"] or "").strip(),
            n=match["n"],
            total=match["total"],
            percent=int(match["pct"]),
            elapsed=match["elapsed"],
            remaining=match["remaining"],
            rate=match["rate"].strip(),
            postfix=(match["postfix"] or "").strip(),
        )
    match = _WITHOUT_TOTAL.search(segment)
    if match:
        return Bar(
            desc=(match["desc"] or "").strip(),
            n=match["n"],
            total=None,
            percent=None,
            elapsed=match["elapsed"],
            remaining=None,
            rate=match["rate"].strip(),
            postfix=(match["postfix"] or "").strip(),
        )
    return None


def _segments(text: str) -> list[str]:
    # tqdm redraws with \r; other output ends with \n
    return [s for s in re.split(r"\r\n|\r|\n", text) if s.strip()]


def last_bar(text: str) -> Bar | None:
    """The last tqdm update in a log's text."""
    for segment in reversed(_segments(text)):
        bar = parse_bar(segment)
        if bar is not None:
            return bar
    return None


def _tail(path: Path) -> str:
    with open(path, "rb") as handle:
        handle.seek(0, 2)
        size = handle.tell()
        handle.seek(max(0, size - _TAIL_BYTES))
        return handle.read().decode("utf-8", errors="replace")


def _last_line(text: str) -> str:
    """The stage's own last log line (submitit's bookkeeping lines say nothing about progress)."""
    for segment in reversed(_segments(text)):
        line = _ANSI.sub("", segment).strip()
        if parse_bar(segment) is None and not line.startswith("submitit "):
            return line
    return ""


def _job_logs(run_dir: Path) -> Iterable[tuple[str, Path]]:
    """(stage label, log) of every job whose result submitit has not written yet."""
    for folder in sorted((run_dir / "logs" / "jobs").glob("*/")):
        for log in sorted(folder.glob("*_log.err")) + sorted(folder.glob("*_log.out")):
            job_task = log.name[: -len("_log.err")]  # "<jobid>_<task>"; an array job's id is "<id>_<i>"
            if (folder / f"{job_task}_result.pkl").exists():
                continue
            yield folder.name, log


def _better(entry: Running, previous: Running | None) -> bool:
    """A stage's stderr holds the bar, its stdout the log lines: prefer a bar, then the newest log."""
    if previous is None:
        return True
    if (entry.bar is None) != (previous.bar is None):
        return entry.bar is not None
    return entry.age_s < previous.age_s


def running(run_dir: Path, recent_s: float = 120, now: float | None = None) -> list[Running]:
    """Every stage of ``run_dir`` whose log was written in the last ``recent_s`` seconds and whose job
    has not finished; one entry per stage (its job log with a bar first, else the rule's log)."""
    now = time.time() if now is None else now
    found: dict[str, Running] = {}

    def consider(stage: str, log: Path) -> None:
        try:
            age = now - log.stat().st_mtime
            if age > recent_s:
                return
            text = _tail(log)
        except OSError:  # rotated or removed between listing and reading
            return
        entry = Running(stage, log, age, last_bar(text), _last_line(text))
        if _better(entry, found.get(stage)):
            found[stage] = entry

    for stage, log in _job_logs(run_dir):
        consider(stage, log)
    # launcher.kind: inline runs the stage in the rule's process: its bar is in the rule's log. Rule
    # logs of job-launched stages hold the launcher's lines only; they count only when they hold a bar.
    for log in sorted((run_dir / "logs").glob("*.log")):
        stage = log.stem.replace(".", "_")  # "<stage>.<wildcard>" -> the job folder's name
        if stage in found:
            continue
        try:
            if now - log.stat().st_mtime <= recent_s and last_bar(_tail(log)) is not None:
                consider(stage, log)
        except OSError:
            continue
    return sorted(found.values(), key=lambda r: r.stage)


def workflow_progress(snakemake_dir: Path) -> str | None:
    """Snakemake's own "N of M steps (x%) done" from its newest log under .snakemake/log/."""
    logs = sorted((snakemake_dir / "log").glob("*.snakemake.log"), key=lambda p: p.stat().st_mtime)
    if not logs:
        return None
    done = re.findall(r"(\d+) of (\d+) steps \((\d+%)\) done", _tail(logs[-1]))
    return f"{done[-1][0]} of {done[-1][1]} steps ({done[-1][2]}) done" if done else None


def format_line(entry: Running, width: int) -> str:
    bar = entry.bar
    if bar is None:
        line = f"{entry.stage:<32} (no progress bar yet) {entry.last_line or 'starting'}"
    else:
        steps = f"{bar.n}/{bar.total}" if bar.total else bar.n
        percent = f"{bar.percent:3d}%" if bar.percent is not None else "    "
        timing = f"{bar.elapsed}<{bar.remaining}" if bar.remaining else bar.elapsed
        label = entry.stage if not bar.desc or bar.desc == entry.stage else f"{entry.stage} ({bar.desc})"
        line = f"{label:<32} {steps:>11} {percent} {timing:>13} {bar.rate:>14}"
        if bar.postfix:
            line += f"  {bar.postfix}"
    if entry.age_s >= 30:  # a bar that stopped moving: say since when
        line += f"  [log quiet {entry.age_s:.0f} s]"
    return line[:width]


def render(run_dirs: list[Path], recent_s: float, snakemake_dir: Path, width: int) -> list[str]:
    lines = []
    overall = workflow_progress(snakemake_dir)
    lines.append(f"{time.strftime('%H:%M:%S')}  " + (f"snakemake: {overall}" if overall else "")[:width])
    for run_dir in run_dirs:
        entries = running(run_dir, recent_s)
        lines.append(f"{run_dir}: {len(entries)} stage(s) running"[:width])
        lines.extend("  " + format_line(e, width - 2) for e in entries)
    return lines


def run_dirs_under(results: Path) -> list[Path]:
    return sorted(p.parent for p in results.glob("*/logs") if p.is_dir())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m workflow_scripts.progress",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "run_dirs", nargs="*", type=Path, help="results/<run> (default: every run under results/)"
    )
    parser.add_argument("--once", action="store_true", help="print once and exit")
    parser.add_argument("--every", type=float, default=2.0, help="seconds between redraws (default 2)")
    parser.add_argument(
        "--recent",
        type=float,
        default=120.0,
        help="a log written within this many seconds is live (default 120)",
    )
    parser.add_argument(
        "--snakemake-dir", type=Path, default=Path(".snakemake"), help="for the overall count"
    )
    args = parser.parse_args(argv)
    run_dirs = args.run_dirs or run_dirs_under(Path("results"))
    if not run_dirs:
        parser.error("no run directory given and none under results/: pass results/<run>")
    for run_dir in run_dirs:
        if not (run_dir / "logs").is_dir():
            parser.error(f"{run_dir} has no logs/ folder: pass a run directory such as results/tiny")
    tty = sys.stdout.isatty()
    drawn = 0
    try:
        while True:
            width = shutil.get_terminal_size((160, 24)).columns if tty else 10_000
            lines = render(run_dirs, args.recent, args.snakemake_dir, width)
            if tty and drawn:
                # back to the first line of the previous drawing and clear it: redraw in place
                sys.stdout.write(f"\x1b[{drawn}F\x1b[J")
            sys.stdout.write("\n".join(lines) + "\n")
            sys.stdout.flush()
            drawn = len(lines)
            if args.once:
                return 0
            time.sleep(args.every)
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())

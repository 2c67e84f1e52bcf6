"""Shared fixtures: offline mode, the repository, tiny configs, and one end-to-end tiny DAG run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

REPO = Path(__file__).resolve().parent.parent
CI_CONFIG = REPO / "tests" / "configs" / "ci.yaml"


def ci_config(**overrides) -> dict:
    from workflow_scripts.config.loader import deep_merge

    return deep_merge(yaml.safe_load(CI_CONFIG.read_text()), overrides)


def snakemake(
    workdir: Path, *args: str, check: bool = True, timeout: int = 1800
) -> subprocess.CompletedProcess:
    """Run the repository's Snakefile with ``workdir`` as working directory (where config.yaml lives)."""
    command = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--cores", "2", *args]
    result = subprocess.run(command, cwd=workdir, capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(
            f"snakemake {' '.join(args)} failed:\n{result.stdout[-4000:]}\n{result.stderr[-6000:]}"
        )
    return result


def stored_val_metrics(workdir: Path, run: str, stage: str) -> dict[str, float]:
    """A training stage's held-out figures (``val_*``) as the DAG's warehouse stored them."""
    import duckdb

    query = "SELECT metric, value FROM train_metrics WHERE run_id = ? AND stage = ? AND metric LIKE 'val_%'"
    with duckdb.connect(str(workdir / "results" / "umm.duckdb"), read_only=True) as con:
        return dict(con.execute(query, [run, stage]).fetchall())


def report_row(report: Path, section_id: str, label: str) -> tuple[str, str]:
    """(the report section with that id, the part of it from the row labelled ``label`` on)."""
    html = report.read_text()
    section = html[html.index(f'<section id="{section_id}">') :]
    section = section[: section.index("</section>")]
    return section, section[section.index(f'<td class="label">{label}</td>') :]


def dry_run_job_counts(dry_run_output: str) -> dict[str, int]:
    """Rule -> job count from the first job-stats table of ``snakemake -n`` (the DAG before checkpoints)."""
    counts, table = {}, False
    for line in dry_run_output.splitlines():
        if line.startswith("job ") and "count" in line:
            table = True
            continue
        if table:
            parts = line.split()
            if not parts or parts[0] == "total":
                break
            if parts[0].startswith("-"):
                continue
            counts[parts[0]] = int(parts[1])
    return counts


def write_config(workdir: Path, config: dict) -> None:
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO


@pytest.fixture(scope="session")
def tiny_dag(tmp_path_factory) -> Path:
    """The tiny DAG run once, end to end, in a fresh directory; returns that directory."""
    workdir = tmp_path_factory.mktemp("dag")
    write_config(workdir, ci_config())
    snakemake(workdir, "all")
    return workdir


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    """Tiny encoder and decoder built by the library code (as the build_tiny_model stage does)."""
    from workflow_scripts.config.loader import parse, resolve
    from workflow_scripts.tiny import uae as tiny

    cfg = parse(resolve({"preset": "tiny"}))
    root = tmp_path_factory.mktemp("tiny_models")
    synthetic = cfg.data.sources.synthetic
    corpus = tiny.caption_corpus(0, synthetic.classes, synthetic.colors, synthetic.textures, scenes_count=300)
    tiny.build_encoder(cfg.models.encoder.tiny, 0, corpus, root / "encoder")
    tiny.build_decoder(cfg.models.decoder.tiny, 0, root / "decoder")
    return {"encoder": root / "encoder", "decoder": root / "decoder"}


def stage_command(
    stage: str,
    workdir: Path,
    inputs: dict[str, Path],
    *,
    wildcards: dict[str, str] | None = None,
    outputs: dict[str, Path] | None = None,
    **overrides,
) -> list[str]:
    """The launcher command line of one stage on given inputs, with the ci config plus ``overrides``;
    its resolved config lives under ``workdir`` and its model is exported to ``workdir/final`` (or
    to ``outputs``)."""
    from workflow_scripts.config.loader import deep_merge
    from workflow_scripts.dag import Run

    user = deep_merge(ci_config(), {"results_root": str(workdir / "results"), "run_name": "stage"})
    run = Run.load(deep_merge(user, overrides))
    return run.launch_command(stage, wildcards, inputs, outputs or {"model": workdir / "final"})


def decoder_phase_command(source: Path, workdir: Path, steps: int = 40, **overrides) -> list[str]:
    """The low-resolution decoder phase on the data and encoder of the run in ``source`` (a run directory),
    micro-batch 4, ``steps`` long, checkpoints every 5 steps."""
    from workflow_scripts.config.loader import deep_merge

    (ci_lowres,) = [p for p in ci_config()["pretrain"]["decoder"]["phases"] if p["name"] == "lowres"]
    phase = deep_merge(
        ci_lowres, {"loop": {"steps": steps, "micro_batch_size": 4, "checkpoint": {"every_steps": 5}}}
    )
    overrides = deep_merge({"pretrain": {"decoder": {"previews": 0, "phases": [phase]}}}, overrides)
    inputs = {
        "decoder": source / "models/tiny/decoder",
        "encoder": source / "train/pretrain_encoder/final",
        "shards": source / "data/shards",
    }
    return stage_command("pretrain_decoder", workdir, inputs, wildcards={"phase": "lowres"}, **overrides)


def decoder_weights(final: Path) -> dict:
    from safetensors.torch import load_file

    return {
        **load_file(final / "transformer/diffusion_pytorch_model.safetensors"),
        **{
            f"projector.{k}": v
            for k, v in load_file(final / "projector/diffusion_pytorch_model.safetensors").items()
        },
    }


@pytest.fixture(scope="session")
def paper_stand_ins(tmp_path_factory):
    """The real-shape stand-ins of the paper-preset models (workflow_scripts/tiny/paper_shapes.py), shared
    by every test that needs one: ``paper_stand_ins(name)`` builds the model the first time it is asked
    for (1 layer per stack; minutes and GBs for the whole set) and returns its directory; ``.root`` is
    their folder. ``UMM_PAPER_STAND_INS=<dir>`` reuses (and completes) a folder built before."""
    from workflow_scripts.tiny import paper_shapes as ps

    reuse = os.environ.get("UMM_PAPER_STAND_INS")
    root = Path(reuse) if reuse else tmp_path_factory.mktemp("paper_shapes")
    root.mkdir(parents=True, exist_ok=True)

    def get(name: str) -> Path:
        if not (root / name).exists():
            ps.build(name, root, layers=1)
        return root / name

    get.root = root
    return get

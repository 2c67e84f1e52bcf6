"""Where every artifact of a run lives. One run directory per experiment: <results_root>/<run_name>/."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from workflow_scripts.config.root import UmmConfig


@dataclass(frozen=True)
class RunLayout:
    root: Path

    @classmethod
    def of(cls, cfg: UmmConfig) -> RunLayout:
        return cls(Path(cfg.results_root) / cfg.run_name)

    # --- config and bookkeeping -------------------------------------------------------------
    @property
    def resolved_config(self) -> Path:
        return self.root / "config.resolved.json"

    def log(self, name: str) -> Path:
        return self.root / "logs" / f"{name}.log"

    def jobs(self, stage: str) -> Path:
        """submitit's folder for a stage: pickled job, stdout/stderr per task, results."""
        return self.root / "logs" / "jobs" / stage

    def benchmark(self, name: str) -> Path:
        return self.root / "benchmarks" / f"{name}.tsv"

    # --- models -------------------------------------------------------------------------------
    def tiny_model(self, component: str) -> Path:
        return self.root / "models" / "tiny" / component

    # --- data ---------------------------------------------------------------------------------
    def raw(self, source: str) -> Path:
        return self.root / "data" / "raw" / f"{source}.parquet"

    def captions(self, source: str) -> Path:
        return self.root / "data" / "captions" / f"{source}.parquet"

    @property
    def shards(self) -> Path:
        return self.root / "data" / "shards"

    @property
    def manifest(self) -> Path:
        return self.root / "data" / "manifest.duckdb"

    @property
    def rl_data(self) -> Path:
        return self.root / "data" / "rl"

    def variant(self, name: str) -> Path:
        """An ablation variant: which captioner, caption reader and decoder it pairs (JSON)."""
        return self.root / "variants" / f"{name}.json"

    # --- training stages ----------------------------------------------------------------------
    def stage_dir(self, stage: str) -> Path:
        return self.root / "train" / stage

    def final(self, stage: str) -> Path:
        """The stage's exported model directory (the Snakemake output)."""
        return self.stage_dir(stage) / "final"

    # --- evaluation -----------------------------------------------------------------------------
    @property
    def unitoken_tokens(self) -> Path:
        """The record index of UniToken's pre-tokenised shards (tokens-*.parquet beside it)."""
        return self.root / "unitoken" / "tokens" / "index.parquet"

    def selection(self, stage: str) -> Path:
        return self.root / "selection" / f"{stage}.json"

    def eval_items(self, bench: str) -> Path:
        return self.root / "eval" / "items" / bench

    def eval_shard(self, system: str, bench: str, shard: int) -> Path:
        return self.root / "eval" / system / bench / f"shard-{shard:03d}"

    def eval_generated(self, system: str, bench: str) -> Path:
        """The list of a (system, benchmark)'s generation shards: the output of its job array."""
        return self.root / "eval" / system / bench / "generated.json"

    def eval_records(self, system: str, bench: str) -> Path:
        return self.root / "eval" / system / bench / "records.parquet"

    def eval_scores(self, system: str, bench: str) -> Path:
        return self.root / "eval" / system / bench / "scores.json"

    def eval_judgement(self, first: str, second: str) -> Path:
        return self.root / "eval" / "judge" / f"{first}__vs__{second}.json"

    @property
    def eval_summary(self) -> Path:
        return self.root / "eval" / "summary.json"

    # --- warehouse and report ---------------------------------------------------------------------
    def ingested(self, what: str) -> Path:
        """Marker an ingest rule writes (row counts) once its slice is in the warehouse."""
        return self.root / "warehouse" / f"{what}.json"

    @property
    def report(self) -> Path:
        return self.root / "report" / "report.html"

    @property
    def rulegraph(self) -> Path:
        return self.root / "report" / "dag.svg"

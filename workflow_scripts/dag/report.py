"""Warehouse and report paths: what each ingest rule loads, and where the reports go."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from workflow_scripts.config.root import UmmConfig
from workflow_scripts.layout import RunLayout


@dataclass(frozen=True)
class ReportPaths:
    """``run.report``: the config, the layout, and what the run trains and evaluates (every training
    stage in order, the RL stages, the systems, benchmarks and judge pairs)."""

    cfg: UmmConfig
    layout: RunLayout
    train_stages: list[str]
    rl_stages: list[str]
    systems: list[str]
    benchmarks: list[str]
    judge_pairs: list[tuple[str, str]]

    @property
    def warehouse_path(self) -> str:
        return self.cfg.warehouse.path or str(Path(self.cfg.results_root) / "umm.duckdb")

    @property
    def index_path(self) -> str:
        return str(Path(self.cfg.results_root) / "index.html")

    def run_dir(self, wildcards) -> str:
        """A params function (a plain string would read to Snakemake as a hard-coded output prefix)."""
        return str(self.layout.root)

    def ingest_training_inputs(self, stage: str) -> dict[str, str]:
        inputs = {"final": str(self.layout.final(stage))}
        if stage in self.rl_stages and self.cfg.eval.selection.enabled:
            inputs["selection"] = str(self.layout.selection(stage))
        return inputs

    def ingest_args(self, kind: str) -> Callable[..., str]:
        """A params function: the warehouse CLI's arguments for one ingest job."""

        def args(wildcards, input, output) -> str:  # Snakemake passes these by name
            from workflow_scripts.dag.run import shell_words  # run.py imports this module

            head = [kind, "--db", self.warehouse_path, "--run", self.cfg.run_name, "--marker", output[0]]
            return shell_words(head, wildcards, input)

        return args

    def ingest_markers(self) -> dict[str, str]:
        """Every per-stage ingest of this run (the run-level ingest waits for them)."""
        markers = {"data": str(self.layout.ingested("data"))}
        markers.update(
            {f"training_{s}": str(self.layout.ingested(f"training/{s}")) for s in self.train_stages}
        )
        markers.update(
            {
                f"eval_{s}_{b}": str(self.layout.ingested(f"eval/{s}/{b}"))
                for s in self.systems
                for b in self.benchmarks
            }
        )
        markers.update(
            {f"judge_{a}_{b}": str(self.layout.ingested(f"judge/{a}__vs__{b}")) for a, b in self.judge_pairs}
        )
        return markers

    def targets(self) -> list[str]:
        return [str(self.layout.report), self.index_path]

"""Warehouse and report paths: what each ingest rule loads, and where the reports go."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from workflow_scripts.layout import decoder_stage


class ReportPaths:
    """Mixed into :class:`workflow_scripts.dag.run.Run`."""

    @property
    def warehouse_path(self) -> str:
        return self.cfg.warehouse.path or str(Path(self.cfg.results_root) / "umm.duckdb")

    @property
    def index_path(self) -> str:
        return str(Path(self.cfg.results_root) / "index.html")

    def run_dir(self, wildcards) -> str:
        """A params function (a plain string would read to Snakemake as a hard-coded output prefix)."""
        return str(self.layout.root)

    @property
    def train_stages(self) -> list[str]:
        unitoken = [f"unitoken_{s}" for s in self.unitoken_stages]
        if unitoken and self.cfg.models.source == "tiny":
            unitoken.insert(0, "unitoken_vq")
        return ["pretrain_encoder", *(decoder_stage(p) for p in self.phases), *self.rl_stages, *unitoken]

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

    def report_targets(self) -> list[str]:
        return [str(self.layout.report), self.index_path]

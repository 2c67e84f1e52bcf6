"""What the Snakefile needs from the package: the resolved run, path functions, stage hashes, targets.

Stage-2 and evaluation paths: :mod:`workflow_scripts.dag.rl`, :mod:`workflow_scripts.dag.evaluation`.

The Snakefile stays a table of contents; every decision about paths and config lives here and is tested.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from workflow_scripts import atomic
from workflow_scripts.config.loader import digest, parse, resolve
from workflow_scripts.config.root import UmmConfig
from workflow_scripts.config.stages import stage_hash
from workflow_scripts.dag.evaluation import EvalPaths
from workflow_scripts.dag.report import ReportPaths
from workflow_scripts.dag.rl import RLPaths
from workflow_scripts.dag.unitoken import UniTokenPaths
from workflow_scripts.layout import RunLayout, decoder_stage
from workflow_scripts.models.paths import DIFFUSERS_FILES, require_model_dir


@dataclass(frozen=True)
class Run(RLPaths, EvalPaths, UniTokenPaths, ReportPaths):
    plain: dict[str, Any]
    cfg: UmmConfig
    layout: RunLayout

    @classmethod
    def load(cls, user_config: Mapping[str, Any], *, write: bool = True) -> Run:
        """Resolve and validate the config, check model paths, and record the resolved config.

        The resolved config is rewritten only when its content changes, so its timestamp never makes
        Snakemake re-run anything by itself.
        """
        plain = resolve(user_config)
        cfg = parse(plain)
        run = cls(plain, cfg, RunLayout.of(cfg))
        run.check_model_paths()
        if write:
            text = json.dumps(plain, indent=2, sort_keys=True) + "\n"
            path = run.layout.resolved_config
            if not path.exists() or path.read_text() != text:
                atomic.write_text(path, text)
        return run

    @property
    def config_path(self) -> str:
        return str(self.layout.resolved_config)

    @property
    def config_hash(self) -> str:
        return digest(self.plain)

    def check_model_paths(self) -> None:
        """Every configured model directory must exist before any job is submitted."""
        models = self.cfg.models
        if models.source == "local":
            require_model_dir(models.encoder.path, "models.encoder.path")
            require_model_dir(models.decoder.path, "models.decoder.path", expect=DIFFUSERS_FILES)
            for name in sorted(set(self.reward_backbones) | set(self.eval_backbones)):
                marker = "open_clip_config.json" if name in ("clip", "longclip") else "config.json"
                require_model_dir(
                    getattr(models.reward, name).path, f"models.reward.{name}.path", expect=(marker,)
                )
        self.check_eval_paths()
        self.check_unitoken_paths()
        captioning = self.cfg.data.captioning
        used = {captioning.draft[s] for s in self.cfg.data.sources.enabled()}
        if "vlm" in used:
            require_model_dir(captioning.draft_model.path, "data.captioning.draft_model.path")
        if captioning.refine == "llm":
            require_model_dir(captioning.refine_model.path, "data.captioning.refine_model.path")

    # --- DAG vocabulary ------------------------------------------------------------------------
    @property
    def sources(self) -> list[str]:
        return self.cfg.data.sources.enabled()

    @property
    def phases(self) -> list[str]:
        return [p.name for p in self.cfg.pretrain.decoder.phases]

    def base_model(self, component: str) -> str:
        """A published model's directory: the tiny build or the configured local path."""
        if self.cfg.models.source == "tiny":
            return str(self.layout.tiny_model(component))
        models = self.cfg.models
        part = (
            getattr(models, component)
            if component in ("encoder", "decoder")
            else getattr(models.reward, component)
        )
        return str(part.path)

    def caption_models(self, source: str) -> dict[str, str]:
        captioning = self.cfg.data.captioning
        models = {}
        if captioning.draft[source] == "vlm":
            models["draft_model"] = str(captioning.draft_model.path)
        if captioning.refine == "llm":
            models["refine_model"] = str(captioning.refine_model.path)
        return models

    def decoder_start(self, phase: str) -> str:
        """Phase k starts from phase k-1's export; the first phase from the base decoder."""
        index = self.phases.index(phase)
        if index == 0:
            return self.base_model("decoder")
        return str(self.layout.final(decoder_stage(self.phases[index - 1])))

    def stage_hash_of(self, stage: str) -> Callable[[Any], str]:
        """A params function of the wildcards alone: the hash of the config values ``stage`` reads.

        Snakemake's params trigger compares only params that do not derive from input/output files,
        so this one re-runs the stage exactly when a value it reads changes.
        """

        def of(wildcards) -> str:
            return stage_hash(self.plain, stage, **dict(wildcards.items()))

        return of

    def launch_args(self, stage: str) -> Callable[..., str]:
        """A params function: the launcher's stage, config, wildcards and named files of one job."""

        def args(wildcards, input, output) -> str:  # Snakemake passes these by name
            parts = [stage, "--config", self.config_path]
            parts += [f"--wildcard {k}={v}" for k, v in wildcards.items()]
            parts += [f"--input {k}={v}" for k, v in input.items()]
            parts += [f"--output {k}={v}" for k, v in output.items()]
            return " ".join(parts)

        return args

    def threads(self, stage: str) -> int:
        """Cores a rule occupies on the machine running Snakemake (its job's, when the job runs here)."""
        if self.cfg.launcher.kind == "slurm":
            return 1
        res = self.cfg.launcher.resources(stage)
        return res.cpus_per_task * res.tasks_per_node

    def data_targets(self) -> list[str]:
        return [str(self.layout.manifest)]

    def pretrain_targets(self) -> list[str]:
        stages = ["pretrain_encoder", *(decoder_stage(p) for p in self.phases)]
        return [str(self.layout.final(s)) for s in stages]

    @property
    def pretrained_encoder(self) -> str:
        return str(self.layout.final("pretrain_encoder"))

    @property
    def pretrained_decoder(self) -> str:
        return str(self.layout.final(decoder_stage(self.phases[-1])))

    def final_targets(self) -> list[str]:
        stages = self.data_targets() + self.pretrain_targets() + self.rl_targets() + self.unitoken_targets()
        stages += self.eval_targets()
        return stages + self.report_targets()

"""What the Snakefile needs from the package: the resolved run, path functions, stage hashes, targets.

A run is composed of one helper per part of the DAG, each given explicitly what it needs: ``run.rl``
(:mod:`workflow_scripts.dag.rl`), ``run.eval`` (:mod:`~workflow_scripts.dag.evaluation`), ``run.unitoken``
(:mod:`~workflow_scripts.dag.unitoken`) and ``run.report`` (:mod:`~workflow_scripts.dag.report`).

The Snakefile stays a table of contents; every decision about paths and config lives here and is tested.
"""

from __future__ import annotations

import json
import shlex
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from workflow_scripts import atomic
from workflow_scripts.catalog import decoder_stage, resources, reward_stage, stage_hash
from workflow_scripts.config.loader import digest, parse, resolve
from workflow_scripts.config.root import UmmConfig
from workflow_scripts.config.typed import ConfigError
from workflow_scripts.dag.evaluation import EvalPaths
from workflow_scripts.dag.report import ReportPaths
from workflow_scripts.dag.rl import RLPaths
from workflow_scripts.dag.unitoken import UniTokenPaths
from workflow_scripts.layout import RunLayout
from workflow_scripts.models.config import BACKBONES
from workflow_scripts.models.paths import DIFFUSERS_FILES, require_model_dir

PLAN_ONLY = "plan_only"  # a --config switch, never part of the resolved config or any stage hash


@dataclass(frozen=True)
class Run:
    plain: dict[str, Any]
    cfg: UmmConfig
    layout: RunLayout
    # plan without the model directories: their checks are skipped and they are left out of the rules'
    # inputs, so a paper-preset plan shows before any model is copied; such a run refuses to execute
    plan_only: bool = False

    @classmethod
    def load(cls, user_config: Mapping[str, Any], *, write: bool = True) -> Run:
        """Resolve and validate the config and check model paths; with ``write``, record the resolved
        config (the Snakefile passes ``write=False`` and records it in ``onstart:``, which Snakemake
        calls only when jobs will really run: planning never writes under results/)."""
        user = dict(user_config)
        plan_only = _switch(user.pop(PLAN_ONLY, False))
        plain = resolve(user)
        cfg = parse(plain)
        run = cls(plain, cfg, RunLayout.of(cfg), plan_only)
        if plan_only:
            print(
                f"note: {PLAN_ONLY}=true: model directories are neither checked nor DAG inputs; this "
                "is a plan (snakemake -n) only, running it stops before the first job",
                file=sys.stderr,
            )
        else:
            run.check_model_paths()
        if write:
            run.write_resolved_config()
        return run

    def write_resolved_config(self) -> None:
        """Record the resolved config that every job reads (``--config``) and the report shows.

        Rewritten only when its content changes, so its timestamp never makes Snakemake re-run anything
        by itself. A plan-only run stops here, before any job starts.
        """
        if self.plan_only:
            raise ConfigError(
                f"{PLAN_ONLY}=true only plans (snakemake -n): drop it from --config to run the jobs"
            )
        text = json.dumps(self.plain, indent=2, sort_keys=True) + "\n"
        path = self.layout.resolved_config
        if not path.exists() or path.read_text() != text:
            atomic.write_text(path, text)

    @property
    def model_paths(self) -> set[str]:
        """Every configured directory outside the results root that a rule names as an input."""
        paths = {self.base_model(c) for c in ("encoder", "decoder") if self.cfg.models.source == "local"}
        if self.cfg.models.source == "local":
            paths |= {self.base_model(b) for b in ("clip", "longclip", "dinov2", "dinov3")}
            paths |= {str(getattr(self.cfg.unitoken.models, p)) for p in ("lm", "vision", "vq")}
        captioning = self.cfg.data.captioning
        paths |= {str(captioning.draft_model.path), str(captioning.refine_model.path)}
        return paths

    def inputs(self, named: Mapping[str, str]) -> dict[str, str]:
        """A rule's named inputs; in plan-only mode without the model directories (they may not exist)."""
        if not self.plan_only:
            return dict(named)
        external = self.model_paths
        return {k: v for k, v in named.items() if v not in external}

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
            for name in self.backbones:
                marker = "open_clip_config.json" if name in ("clip", "longclip") else "config.json"
                require_model_dir(
                    getattr(models.reward, name).path, f"models.reward.{name}.path", expect=(marker,)
                )
        self.eval.check_paths()
        self.unitoken.check_paths()
        captioning = self.cfg.data.captioning
        used = {captioning.draft[s] for s in self.cfg.data.sources.enabled()}
        if "vlm" in used:
            require_model_dir(captioning.draft_model.path, "data.captioning.draft_model.path")
        if captioning.refine == "llm":
            require_model_dir(captioning.refine_model.path, "data.captioning.refine_model.path")

    # --- the parts of the DAG, each given what it needs -------------------------------------------
    @cached_property
    def unitoken(self) -> UniTokenPaths:
        return UniTokenPaths(self.cfg, self.layout)

    @cached_property
    def eval(self) -> EvalPaths:
        return EvalPaths(self.cfg, self.layout, self.unitoken.systems, self.backbone_inputs)

    @cached_property
    def rl(self) -> RLPaths:
        return RLPaths(
            self.cfg,
            self.layout,
            self.pretrained_encoder,
            self.pretrained_decoder,
            self.backbone_inputs,
            self.eval.backbones,
        )

    @cached_property
    def report(self) -> ReportPaths:
        ev = self.eval
        return ReportPaths(
            self.cfg,
            self.layout,
            self.train_stages,
            self.rl.stages,
            ev.systems,
            ev.benchmarks,
            ev.judge_pairs,
        )

    # --- DAG vocabulary ------------------------------------------------------------------------
    @property
    def sources(self) -> list[str]:
        return self.cfg.data.sources.enabled()

    @property
    def phases(self) -> list[str]:
        return [p.name for p in self.cfg.pretrain.decoder.phases]

    def base_model(self, component: str) -> str:
        """A published model's directory: the tiny build or the configured local path."""
        if component == "decoder" and self.cfg.trains_vae:
            return str(self.layout.final("vae_train"))  # the tiny decoder with its VAE trained
        if component in BACKBONES and self.cfg.trains_rewards:
            return str(self.layout.final(reward_stage(component)))  # the tiny backbone, trained
        if self.cfg.models.source == "tiny":
            return str(self.layout.tiny_model(component))
        models = self.cfg.models
        part = (
            getattr(models, component)
            if component in ("encoder", "decoder")
            else getattr(models.reward, component)
        )
        return str(part.path)

    def backbone_inputs(self, names) -> dict[str, str]:
        """A rule's inputs for the named reward/eval backbones (``reward_<name>``)."""
        return self.inputs({f"reward_{name}": self.base_model(name) for name in names})

    @property
    def train_stages(self) -> list[str]:
        """Every training stage of the run, in order (each has a ``train/<stage>/final`` export)."""
        unitoken = [f"unitoken_{s}" for s in self.unitoken.stages]
        if unitoken and self.cfg.models.source == "tiny":
            unitoken.insert(0, "unitoken_vq")
        vae = ["vae_train"] if self.cfg.trains_vae else []
        rewards = [reward_stage(b) for b in self.backbones] if self.cfg.trains_rewards else []
        decoder = [decoder_stage(p) for p in self.phases]
        return [*vae, *rewards, "pretrain_encoder", *decoder, *self.rl.stages, *unitoken]

    @property
    def backbones(self) -> list[str]:
        """The reward/eval backbones some rule of the run reads."""
        used = set(self.rl.reward_backbones) | set(self.eval.backbones)
        if "geneval" in self.eval.benchmarks and self.cfg.eval.detector.color == "clip":
            used.add("clip")
        return [b for b in BACKBONES if b in used]

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
            return shell_words([stage, "--config", self.config_path], wildcards, input, output)

        return args

    def launch_command(
        self, stage: str, wildcards: Mapping[str, str] | None = None, inputs=None, outputs=None
    ) -> list[str]:
        """One job's launcher call as an argv, as its rule runs it (for benches and tests)."""
        wildcards = dict(wildcards or {})
        head = [sys.executable, "-m", "workflow_scripts.launch", stage, "--config", self.config_path]
        head += ["--stage-hash", stage_hash(self.plain, stage, **wildcards)]
        return [*head, *named_words(wildcards, inputs, outputs)]

    def threads(self, stage: str) -> int:
        """Cores a rule occupies on the machine running Snakemake (its job's, when the job runs here)."""
        if self.cfg.launcher.kind == "slurm":
            return 1
        res = resources(self.cfg, stage)
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
        stages = self.data_targets() + self.pretrain_targets() + self.rl.targets() + self.unitoken.targets()
        stages += self.eval.targets()
        return stages + self.report.targets()


def named_words(wildcards: Any = None, inputs: Any = None, outputs: Any = None) -> list[str]:
    """The launcher's ``--wildcard/--input/--output NAME=VALUE`` arguments."""
    words = []
    for flag, named in (("--wildcard", wildcards), ("--input", inputs), ("--output", outputs)):
        for key, value in (named or {}).items():
            words += [flag, f"{key}={value}"]
    return words


def shell_words(head: list[str], wildcards: Any = None, inputs: Any = None, outputs: Any = None) -> str:
    """``head`` then the named arguments as one shell string, every word quoted: a path with a space (a
    results root, a data folder) stays one argument."""
    words = [*head, *named_words(wildcards, inputs, outputs)]
    return " ".join(shlex.quote(str(w)) for w in words)


def _switch(value: Any) -> bool:
    """A --config boolean: Snakemake hands nested values over as strings."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "yes", "on", "1"):
        return True
    if text in ("false", "no", "off", "0", "none", "null", ""):
        return False
    raise ConfigError(f"config key '{PLAN_ONLY}' = {value!r}; use true or false")

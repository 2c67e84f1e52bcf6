"""The root config: composes every component's dataclass."""

from __future__ import annotations

import re
from dataclasses import dataclass

from workflow_scripts.config.inference import InferenceConfig
from workflow_scripts.config.typed import doc
from workflow_scripts.data.config import DataConfig
from workflow_scripts.eval.config import EvalConfig
from workflow_scripts.launch.config import LauncherConfig
from workflow_scripts.models.config import ModelsConfig
from workflow_scripts.pretrain.config import PretrainConfig
from workflow_scripts.reward.config import RewardTrainConfig
from workflow_scripts.rl.config import RLConfig
from workflow_scripts.unitoken.config import UniTokenConfig
from workflow_scripts.vae.config import VAETrainConfig

# Names that become one path component (results/<run_name>/, train/<stage>_<phase>/, a
# Snakemake wildcard value) and a word of every rule's shell command: a slug, so no name can split a
# command, escape its directory (`/`, `..`) or clash with a wildcard pattern.
SLUG = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")


def check_slug(key: str, name: str) -> None:
    if not SLUG.fullmatch(name) or ".." in name:
        raise ValueError(
            f"config key '{key}' = {name!r} is not a valid name: it becomes a directory name, so use "
            "letters, digits and . _ + - only (no spaces, no '/', no '..'), starting with a letter or "
            f"digit, e.g. {re.sub(r'[^A-Za-z0-9._+-]+', '_', name).strip('._+-') or 'run1'!r}"
        )


@dataclass(frozen=True, kw_only=True, slots=True)
class WarehouseConfig:
    path: str | None = doc(
        "DuckDB file shared by every run of a results root; null: <results_root>/umm.duckdb."
    )


@dataclass(frozen=True, kw_only=True, slots=True)
class UmmConfig:
    """Everything one experiment is made of. Only these values differ between the tiny and paper presets."""

    preset: str = doc("Preset the values start from: 'tiny' (default) or 'paper'.")
    run_name: str = doc("Experiment name; outputs land in <results_root>/<run_name>/.")
    results_root: str = doc("Directory that holds every run.")
    seed: int = doc("Master seed; every stage derives its own seeds from it.")
    models: ModelsConfig = doc("Encoder and decoder.")
    data: DataConfig = doc("Long-caption dataset build.")
    inference: InferenceConfig = doc("Sampling settings.")
    vae: VAETrainConfig = doc("The tiny decoder's autoencoder, trained before decoder pretraining.")
    reward_train: RewardTrainConfig = doc("The tiny reward backbones, trained before any reward reads them.")
    pretrain: PretrainConfig = doc("Stage 1: encoder SFT and decoder pretraining.")
    rl: RLConfig = doc("Stage 2: Unified-GRPO (cold start, 2a, 2b) and the ablation variants.")
    eval: EvalConfig = doc("Benchmarks (Tables 1-5), the ablation and checkpoint selection.")
    warehouse: WarehouseConfig = doc("The DuckDB results warehouse and the HTML reports.")
    launcher: LauncherConfig = doc("Where heavy stages run (local / Slurm) and their resources.")
    unitoken: UniTokenConfig = doc("The UniToken recipe, trained and evaluated beside UAE.")

    def __post_init__(self) -> None:
        self._check_names()
        readers = {
            "pretrain.encoder": self.pretrain.encoder.resolution,
            "rl.coldstart": self.rl.coldstart.resolution,
            "rl.encoder": self.rl.encoder.resolution,
            "rl.decoder": self.rl.decoder.resolution,
        }
        for phase in self.pretrain.decoder.phases:
            readers[f"pretrain.decoder phase '{phase.name}'"] = phase.resolution
        if self.trains_vae:
            readers["vae"] = self.vae.resolution
        if self.trains_rewards:
            readers["reward_train"] = self.reward_train.resolution
        available = list(self.data.resolutions)
        if self.unitoken.enabled:
            if self.models.source == "tiny":  # the tokenizer reads data shards at its own resolution
                readers["unitoken.models.tiny_vq"] = self.unitoken.models.tiny_vq.resolution
            if "unitoken" in set(self.eval.systems) | set(self.rl.variants):
                raise ValueError("'unitoken' names UniToken's system; rename the variant or system")
        clash = set(self.eval.systems) & set(self.rl.variants)
        if clash:
            raise ValueError(f"eval.systems names {sorted(clash)} are also rl.variants; rename them")
        # a pair naming 'unitoken' is skipped while the recipe is disabled (dag.evaluation.judge_pairs)
        systems = {*self.rl.variants, *self.eval.systems, "unitoken"}
        for first, second in self.eval.judge.pairs:
            for name in (first, second):
                if name not in systems:
                    raise ValueError(
                        f"eval.judge.pairs names '{name}', which is not a system: one of rl.variants, "
                        "eval.systems or 'unitoken'"
                    )
        for key, resolution in readers.items():
            if resolution not in available:
                raise ValueError(f"{key} resolution {resolution} is not one of data.resolutions {available}")

    @property
    def trains_vae(self) -> bool:
        """Whether the DAG trains the decoder's VAE: the tiny one only (a published VAE is used as is)."""
        return self.vae.enabled and self.models.source == "tiny"

    @property
    def trains_rewards(self) -> bool:
        """Whether the DAG trains the reward backbones: the tiny ones only (published ones are used as is)."""
        return self.reward_train.enabled and self.models.source == "tiny"

    def _check_names(self) -> None:
        check_slug("run_name", self.run_name)
        for phase in self.pretrain.decoder.phases:
            check_slug(f"pretrain.decoder.phases.{phase.name}", phase.name)
        for stage in self.unitoken.stages:
            check_slug(f"unitoken.stages.{stage.name}", stage.name)
        for name in self.eval.systems:
            check_slug(f"eval.systems.{name}", name)
        for name in self.eval.judge.judges:
            check_slug(f"eval.judge.judges.{name}", name)

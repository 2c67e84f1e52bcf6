"""The root config: composes every component's dataclass."""

from __future__ import annotations

from dataclasses import dataclass

from workflow_scripts.config.inference import InferenceConfig
from workflow_scripts.config.typed import doc
from workflow_scripts.data.config import DataConfig
from workflow_scripts.launch.config import LauncherConfig
from workflow_scripts.models.config import ModelsConfig
from workflow_scripts.pretrain.config import PretrainConfig


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
    pretrain: PretrainConfig = doc("Stage 1: encoder SFT and decoder pretraining.")
    launcher: LauncherConfig = doc("Where heavy stages run (local / Slurm) and their resources.")

    def __post_init__(self) -> None:
        if self.pretrain.encoder.resolution not in self.data.resolutions:
            raise ValueError(
                f"pretrain.encoder.resolution {self.pretrain.encoder.resolution} is not one of "
                f"data.resolutions {list(self.data.resolutions)}"
            )
        for phase in self.pretrain.decoder.phases:
            if phase.resolution not in self.data.resolutions:
                raise ValueError(
                    f"pretrain.decoder phase '{phase.name}' resolution {phase.resolution} is not one "
                    f"of data.resolutions {list(self.data.resolutions)}"
                )

"""UniToken's paths in the DAG: its model parts, the stage chain align -> joint -> instruct, its system."""

from __future__ import annotations

from dataclasses import dataclass

from workflow_scripts.catalog import UNITOKEN_SYSTEM
from workflow_scripts.config.root import UmmConfig
from workflow_scripts.layout import RunLayout
from workflow_scripts.models.paths import require_model_dir


@dataclass(frozen=True)
class UniTokenPaths:
    """``run.unitoken``: needs only the config and the run's layout."""

    cfg: UmmConfig
    layout: RunLayout

    @property
    def stages(self) -> list[str]:
        unitoken = self.cfg.unitoken
        return [s.name for s in unitoken.stages] if unitoken.enabled else []

    @property
    def systems(self) -> list[str]:
        return [UNITOKEN_SYSTEM] if self.cfg.unitoken.enabled else []

    def part(self, part: str) -> str:
        """'lm' / 'vision': the tiny build or the configured directory; 'vq': the trained tiny
        tokenizer or the configured (converted) release."""
        models = self.cfg.unitoken.models
        if self.cfg.models.source == "local":
            return str(getattr(models, part))
        if part == "vq":
            return str(self.layout.final("unitoken_vq"))
        return str(self.layout.tiny_model(f"unitoken_{part}"))

    def parts(self) -> dict[str, str]:
        return {part: self.part(part) for part in ("lm", "vision", "vq")}

    def train_inputs(self, stage: str) -> dict[str, str]:
        """Stage 1 starts from the published parts; every later stage from the one before it."""
        index = self.stages.index(stage)
        inputs = {"tokens": str(self.layout.unitoken_tokens)}
        if index == 0:
            return {**inputs, **self.parts()}
        return {**inputs, "start": str(self.layout.final(f"unitoken_{self.stages[index - 1]}"))}

    def pretokenize_inputs(self) -> dict[str, str]:
        return {"shards": str(self.layout.shards), **self.parts()}

    def system_inputs(self) -> dict[str, str]:
        """UniToken after its last stage, and the tokenizer whose decoder draws its codes."""
        last = self.stages[-1]
        return {"model": str(self.layout.final(f"unitoken_{last}")), "vq": self.part("vq")}

    def targets(self) -> list[str]:
        return [str(self.layout.variant(UNITOKEN_SYSTEM))] if self.cfg.unitoken.enabled else []

    def check_paths(self) -> None:
        unitoken = self.cfg.unitoken
        if not unitoken.enabled or self.cfg.models.source != "local":
            return
        require_model_dir(unitoken.models.lm, "unitoken.models.lm")
        require_model_dir(unitoken.models.vision, "unitoken.models.vision")
        require_model_dir(
            unitoken.models.vq, "unitoken.models.vq", expect=("vqvae/config.json", "decoder.safetensors")
        )

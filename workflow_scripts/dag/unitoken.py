"""UniToken's paths in the DAG: its model parts, the stage chain align -> joint -> instruct, its system."""

from __future__ import annotations

from workflow_scripts.config.stages import UNITOKEN_SYSTEM
from workflow_scripts.models.paths import require_model_dir


class UniTokenPaths:
    """Mixed into :class:`workflow_scripts.dag.run.Run`."""

    @property
    def unitoken_stages(self) -> list[str]:
        unitoken = self.cfg.unitoken
        return [s.name for s in unitoken.stages] if unitoken.enabled else []

    @property
    def unitoken_systems(self) -> list[str]:
        return [UNITOKEN_SYSTEM] if self.cfg.unitoken.enabled else []

    def unitoken_part(self, part: str) -> str:
        """'lm' / 'vision': the tiny build or the configured directory; 'vq': the trained tiny
        tokenizer or the configured (converted) release."""
        models = self.cfg.unitoken.models
        if self.cfg.models.source == "local":
            return str(getattr(models, part))
        if part == "vq":
            return str(self.layout.final("unitoken_vq"))
        return str(self.layout.tiny_model(f"unitoken_{part}"))

    def unitoken_parts(self) -> dict[str, str]:
        return {part: self.unitoken_part(part) for part in ("lm", "vision", "vq")}

    def unitoken_train_inputs(self, stage: str) -> dict[str, str]:
        """Stage 1 starts from the published parts; every later stage from the one before it."""
        index = self.unitoken_stages.index(stage)
        inputs = {"tokens": str(self.layout.unitoken_tokens)}
        if index == 0:
            return {**inputs, **self.unitoken_parts()}
        return {**inputs, "start": str(self.layout.final(f"unitoken_{self.unitoken_stages[index - 1]}"))}

    def unitoken_pretokenize_inputs(self) -> dict[str, str]:
        return {"shards": str(self.layout.shards), **self.unitoken_parts()}

    def unitoken_system_inputs(self) -> dict[str, str]:
        """UniToken after its last stage, and the tokenizer whose decoder draws its codes."""
        last = self.unitoken_stages[-1]
        return {"model": str(self.layout.final(f"unitoken_{last}")), "vq": self.unitoken_part("vq")}

    def unitoken_targets(self) -> list[str]:
        return [str(self.layout.variant(UNITOKEN_SYSTEM))] if self.cfg.unitoken.enabled else []

    def check_unitoken_paths(self) -> None:
        unitoken = self.cfg.unitoken
        if not unitoken.enabled or self.cfg.models.source != "local":
            return
        require_model_dir(unitoken.models.lm, "unitoken.models.lm")
        require_model_dir(unitoken.models.vision, "unitoken.models.vision")
        require_model_dir(
            unitoken.models.vq, "unitoken.models.vq", expect=("vqvae/config.json", "decoder.safetensors")
        )

"""Stage-2 paths: which models each Unified-GRPO stage and ablation variant reads.

Where an RL stage's model feeds a later one, the path comes from ``model_of(stage)``: the Snakefile
passes a function that returns the checkpoint picked by validation (``select_checkpoint``) or, with
selection off, the stage's final export.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from workflow_scripts.catalog import rl_decoder_stage
from workflow_scripts.config.root import UmmConfig
from workflow_scripts.layout import RunLayout
from workflow_scripts.models.config import BACKBONES

ModelOf = Callable[[str], str]


@dataclass(frozen=True)
class RLPaths:
    """``run.rl``: the config, the layout, the pretrained pair RL starts from, how a rule names a backbone
    input (``Run.backbone_inputs``) and the backbones checkpoint selection scores with (``run.eval``)."""

    cfg: UmmConfig
    layout: RunLayout
    pretrained_encoder: str
    pretrained_decoder: str
    backbone_inputs: Callable[[list[str]], dict[str, str]]
    eval_backbones: list[str]

    @property
    def variants_need_training(self) -> bool:
        return any(v != "none" for v in self.cfg.rl.variants)

    @property
    def reward_backbones(self) -> list[str]:
        """Backbones the RL reward and the cold start's loss weight (when any RL stage runs)."""
        rewards = self.cfg.rl.rewards
        if not self.variants_need_training:
            return []
        used = set(rewards.reconstruction.alphas) if rewards.reconstruction.weight else set()
        if "rl_coldstart" in self.stages:
            used |= set(self.cfg.rl.coldstart.alphas)
        return [b for b in BACKBONES if b in used]

    def reward_inputs(self) -> dict[str, str]:
        """The reward backbones of Stage 2a / 2b."""
        rewards = self.cfg.rl.rewards
        names = rewards.reconstruction.alphas if rewards.reconstruction.weight else {}
        return self.backbone_inputs([b for b in BACKBONES if b in names])

    def coldstart_inputs(self) -> dict[str, str]:
        """The backbones of the cold start's loss, the pretrained pair and the RL split."""
        return {
            **self.backbone_inputs([b for b in BACKBONES if b in self.cfg.rl.coldstart.alphas]),
            "encoder": self.pretrained_encoder,
            "decoder": self.pretrained_decoder,
            "rl_data": str(self.layout.rl_data),
        }

    @property
    def stages(self) -> list[str]:
        """RL stages the configured variants need, in training order."""
        variants = set(self.cfg.rl.variants)
        stages = []
        if self.cfg.rl.coldstart.enabled and variants - {"none"}:
            stages.append("rl_coldstart")
        if variants & {"2a", "2a+2b"}:
            stages.append("rl_encoder")
        stages += [rl_decoder_stage(v) for v in ("2b", "2a+2b") if v in variants]
        return stages

    def decoder_start(self, model_of: ModelOf) -> str:
        """RL's decoder: the cold start's when it runs, else the pretrained one."""
        return model_of("rl_coldstart") if self.cfg.rl.coldstart.enabled else self.pretrained_decoder

    def encoder_start(self, model_of: ModelOf) -> str:
        """RL's encoder: the cold start's when it trains one (hidden_states mode; its directory holds the
        encoder beside the decoder), else the pretrained one."""
        return model_of("rl_coldstart") if self.cfg.rl.coldstart.trains_encoder else self.pretrained_encoder

    def captioner(self, variant: str, model_of: ModelOf) -> str:
        if variant in ("2a", "2a+2b"):
            return model_of("rl_encoder")
        return self.pretrained_encoder if variant == "none" else self.encoder_start(model_of)

    def reader(self, variant: str, model_of: ModelOf) -> str:
        """The LLM a variant's decoder reads prompts with: its captioner (``rl.reader: captioner``, the
        release's one LLM), or the frozen encoder RL starts from (``pretrained``, the ablation)."""
        if variant == "none" or self.cfg.rl.reader == "captioner":
            return self.captioner(variant, model_of)
        return self.encoder_start(model_of)

    def _tracked(self, model_of: ModelOf) -> tuple[ModelOf, Callable[[dict[str, str]], dict[str, str]]]:
        """``model_of`` plus a finisher that adds the selection record of every stage it was asked for:
        the selected checkpoint is no rule's output, so the record is what ties its readers to the stage
        (a re-trained stage is re-selected, and everything that read its pick re-runs)."""
        asked: list[str] = []

        def of(stage: str) -> str:
            asked.append(stage)
            return model_of(stage)

        def finish(inputs: dict[str, str]) -> dict[str, str]:
            if self.cfg.eval.selection.enabled:
                inputs.update({f"selection_{s}": str(self.layout.selection(s)) for s in asked})
            return inputs

        return of, finish

    def encoder_inputs(self, model_of: ModelOf) -> dict[str, str]:
        of, finish = self._tracked(model_of)
        return finish(
            {
                **self.reward_inputs(),
                "encoder": self.encoder_start(of),
                "decoder": self.decoder_start(of),
                "rl_data": str(self.layout.rl_data),
            }
        )

    def decoder_inputs(self, variant: str, model_of: ModelOf) -> dict[str, str]:
        of, finish = self._tracked(model_of)
        parts = {
            "captioner": self.captioner(variant, of),
            "text_encoder": self.reader(variant, of),
            "decoder": self.decoder_start(of),
        }
        return finish({**self.reward_inputs(), **parts, "rl_data": str(self.layout.rl_data)})

    def variant_inputs(self, variant: str, model_of: ModelOf) -> dict[str, str]:
        """The (captioner, caption reader, decoder) triple of an ablation variant."""
        of, finish = self._tracked(model_of)
        if variant == "none":
            decoder = self.pretrained_decoder
        elif variant in ("coldstart", "2a"):
            decoder = self.decoder_start(of)
        else:
            decoder = of(rl_decoder_stage(variant))
        return finish(
            {
                "captioner": self.captioner(variant, of),
                "text_encoder": self.reader(variant, of),
                "decoder": decoder,
            }
        )

    def selection_inputs(self, stage: str, model_of: ModelOf) -> dict[str, str]:
        """What scoring a stage's checkpoints needs: the stage's export (it must be done), the val split,
        the Unified-Bench backbones, and the partner models the stage trained against. A part of the
        (captioner, text_encoder, decoder) triple left out is the candidate checkpoint itself."""
        of, finish = self._tracked(model_of)
        inputs = {
            "final": str(self.layout.final(stage)),
            "shards": str(self.layout.shards),
            **self.backbone_inputs(self.eval_backbones),
        }
        if stage == "rl_encoder":
            inputs["decoder"] = self.decoder_start(of)
            if self.cfg.rl.reader != "captioner":
                inputs["text_encoder"] = self.encoder_start(of)
        elif stage == "rl_coldstart":
            if not self.cfg.rl.coldstart.trains_encoder:  # else the candidate is the whole pair
                inputs["captioner"] = inputs["text_encoder"] = self.pretrained_encoder
        else:
            variant = stage.removeprefix("rl_decoder_")
            inputs["captioner"] = self.captioner(variant, of)
            inputs["text_encoder"] = self.reader(variant, of)
        return finish(inputs)

    @staticmethod
    def selected_model(selection_file: str) -> str:
        import json
        from pathlib import Path

        return json.loads(Path(selection_file).read_text())["selected"]

    def targets(self) -> list[str]:
        return [str(self.layout.variant(v)) for v in self.cfg.rl.variants]

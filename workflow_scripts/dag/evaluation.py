"""Evaluation paths: systems (ablation variants and external baselines), item sets, shards, scores."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from workflow_scripts.config.root import UmmConfig
from workflow_scripts.config.typed import ConfigError
from workflow_scripts.layout import RunLayout
from workflow_scripts.models.paths import require_model_dir


@dataclass(frozen=True)
class EvalPaths:
    """``run.eval``: the config, the layout, the systems other recipes add (UniToken's) and how a rule
    names a backbone input (``Run.backbone_inputs``)."""

    cfg: UmmConfig
    layout: RunLayout
    recipe_systems: list[str]
    backbone_inputs: Callable[[list[str]], dict[str, str]]

    @property
    def systems(self) -> list[str]:
        return [*self.cfg.rl.variants, *self.recipe_systems, *self.cfg.eval.systems]

    @property
    def external_systems(self) -> list[str]:
        return list(self.cfg.eval.systems)

    @property
    def benchmarks(self) -> list[str]:
        return self.cfg.eval.benchmarks()

    @property
    def backbones(self) -> list[str]:
        """Unified-Bench's backbones, needed by the benchmark and by checkpoint selection."""
        ev = self.cfg.eval
        return list(ev.unified_bench.backbones) if ev.unified_bench.enabled or ev.selection.enabled else []

    def score_inputs(self, system: str, bench: str) -> dict[str, str]:
        inputs = {
            "item_set": str(self.layout.eval_items(bench)),
            "generated": str(self.layout.eval_generated(system, bench)),
        }
        if bench == "unified_bench":
            inputs.update(self.backbone_inputs(self.backbones))
            # the shapes-world checker's ceiling runs the system's own autoencoder (eval/learning.py)
            inputs["system"] = str(self.layout.variant(system))
        elif bench == "geneval" and self.cfg.eval.detector.color == "clip":
            inputs.update(self.backbone_inputs(["clip"]))
        return inputs

    @property
    def judge_pairs(self) -> list[tuple[str, str]]:
        judge = self.cfg.eval.judge
        if not (judge.enabled and judge.judges and "unified_bench" in self.benchmarks):
            return []
        return [(a, b) for a, b in judge.pairs if a in self.systems and b in self.systems]

    def summary_inputs(self) -> dict[str, str]:
        inputs = {
            f"scores_{s}_{b}": str(self.layout.eval_scores(s, b))
            for s in self.systems
            for b in self.benchmarks
        }
        inputs.update({f"judge_{a}_{b}": str(self.layout.eval_judgement(a, b)) for a, b in self.judge_pairs})
        return inputs

    def targets(self) -> list[str]:
        return [str(self.layout.eval_summary)] if self.benchmarks else []

    @staticmethod
    def _check_shapes_judge(items_file: str) -> None:
        """Before any image is drawn: items the shapes-world judge (judge_path null) cannot judge stop the
        plan, instead of the scoring after every system has generated them."""
        from workflow_scripts.eval.geneval_pp import outside_shapes_world

        try:
            unknown = outside_shapes_world(items_file)
        except ValueError as error:
            raise ConfigError(str(error)) from None
        if unknown:
            raise ConfigError(
                f"config key 'eval.geneval_pp.judge_path': null judges with the shapes-world judge, which "
                f"cannot judge {', '.join(unknown[:5])}{' ...' if len(unknown) > 5 else ''} of {items_file}: "
                "set it to a local VLM directory (paper: Qwen2.5-VL-72B-Instruct)"
            )

    def check_paths(self) -> None:
        ev = self.cfg.eval
        for key, path in (
            ("eval.geneval.items_file", ev.geneval.items_file),
            ("eval.geneval_pp.items_file", ev.geneval_pp.items_file),
            ("eval.mmt.tsv", ev.mmt.tsv),
        ):
            if path and not Path(path).is_file():
                raise ConfigError(f"config key '{key}': {path} does not exist")
        if ev.unified_bench.folder and not Path(ev.unified_bench.folder).is_dir():
            raise ConfigError(
                f"config key 'eval.unified_bench.folder': {ev.unified_bench.folder} is not a directory"
            )
        if "geneval" in self.benchmarks and ev.detector.kind in ("mask2former", "transformers"):
            require_model_dir(ev.detector.path, "eval.detector.path")
        if ev.geneval_pp.judge_path and "geneval_pp" in self.benchmarks:  # GenEval++ needs no detector
            require_model_dir(ev.geneval_pp.judge_path, "eval.geneval_pp.judge_path")
        elif ev.geneval_pp.items_file and "geneval_pp" in self.benchmarks:
            self._check_shapes_judge(ev.geneval_pp.items_file)
        if self.judge_pairs:  # a judge is a backend name or a local VLM directory
            for name, backend in ev.judge.judges.items():
                if backend != "scene_graph":
                    require_model_dir(backend, f"eval.judge.judges.{name}")
        if ev.mmt.judge_path and "mmt" in self.benchmarks:
            require_model_dir(ev.mmt.judge_path, "eval.mmt.judge_path")
        for name, system in ev.systems.items():
            if system.kind == "uae-release":
                from workflow_scripts.models.release import check_layout

                check_layout(system.path, f"eval.systems.{name}.path")
            for part in ("captioner", "text_encoder", "decoder"):
                path = getattr(system, part)
                if path and not Path(path).is_dir():
                    raise ConfigError(f"config key 'eval.systems.{name}.{part}': {path} does not exist")

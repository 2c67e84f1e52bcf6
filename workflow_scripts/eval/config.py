"""Evaluation configuration: which systems, which benchmarks, how they are sharded and scored."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from workflow_scripts.config.typed import doc

BENCHMARKS = ("unified_bench", "geneval", "geneval_pp", "mmt")


@dataclass(frozen=True, kw_only=True, slots=True)
class ExternalSystemConfig:
    """A baseline given by paths (any encoder and/or decoder directory) or a UAE release checkpoint."""

    kind: Literal["paths", "uae-release"] = doc(
        "'paths': the three directories below; 'uae-release': a release checkpoint directory (path) "
        "holding llm, llm_lora, llm_model_preprocessor, dit, dit_lora and SD3_model, whose one LoRA LLM "
        "captions and conditions the decoder with the release's conditioning.",
        default="paths",
    )
    path: str | None = doc(
        "Release checkpoint directory (kind 'uae-release'; the release's Checkpoints/).", default=None
    )
    captioner: str | None = doc(
        "Encoder (Qwen2.5-VL layout) that captions and answers; null: generation only.", default=None
    )
    text_encoder: str | None = doc(
        "LLM directory the decoder reads prompts with (usually the captioner).", default=None
    )
    decoder: str | None = doc(
        "Trained decoder directory (uae_decoder.json); null: understanding only.", default=None
    )

    def __post_init__(self) -> None:
        parts = [p for p in ("captioner", "text_encoder", "decoder") if getattr(self, p)]
        if self.kind == "uae-release" and (not self.path or parts):
            raise ValueError(
                "kind 'uae-release' takes path (the release's Checkpoints/ directory) and no "
                f"captioner/text_encoder/decoder (set: {', '.join(parts) or 'none'}; path: {self.path})"
            )
        if self.kind == "paths" and self.path:
            raise ValueError("path is for kind 'uae-release'; a 'paths' system names captioner/decoder")


@dataclass(frozen=True, kw_only=True, slots=True)
class UnifiedBenchConfig:
    enabled: bool = doc("Run Unified-Bench (Table 1).")
    folder: str | None = doc(
        "The release's fixed image folder (UniBench/Image, 100 images): items are keyed by file name and "
        "read upright (EXIF orientation applied); null only with own_split."
    )
    own_split: bool = doc(
        "With folder null: score the data build's bench split instead of the official images (the report "
        "marks such a run 'not the official image set'; tiny preset: true). A set folder always wins."
    )
    resolution: int = doc("Redraw side in pixels.")
    backbones: list[str] = doc(
        "Similarity backbones (paper: clip, longclip, dinov2, dinov3); Overall = their mean."
    )

    def __post_init__(self) -> None:
        if not self.enabled:
            return
        if self.folder is None and not self.own_split:
            raise ValueError(
                "folder is not set: point eval.unified_bench.folder at the release's 100 images "
                '(UniBench/Image), e.g. --config eval="{unified_bench: {folder: /data/UniBench/Image}}", '
                "or set eval.unified_bench.own_split: true to score the data build's bench split "
                "(not the official image set)"
            )


@dataclass(frozen=True, kw_only=True, slots=True)
class DetectorConfig:
    kind: Literal["shapes", "mask2former", "transformers"] = doc(
        "'shapes': exact detector of the procedural shapes world (tiny preset); 'mask2former': GenEval's "
        "official kind, a COCO instance-segmentation Mask2FormerForUniversalSegmentation (boxes + masks; "
        "paper preset); 'transformers': any box-only AutoModelForObjectDetection (the report flags it: "
        "colours are then read on box crops, not masks)."
    )
    path: str | None = doc("Detector directory in transformers layout (kinds 'mask2former', 'transformers').")
    color: Literal["palette", "clip"] = doc(
        "Object colour: nearest of the ten colours to the object's dominant pixels ('palette'), or GenEval's "
        "CLIP zero-shot classification of the crop (uses models.reward.clip; official: ViT-L-14 OpenAI)."
    )
    threshold: float = doc("Keep detections scoring above this (official: 0.3).")
    counting_threshold: float = doc("... and above this for the counting task (official: 0.9).")
    max_objects: int = doc("At most this many detections per class (official: 16).")
    max_overlap: float = doc("Suppress same-class boxes with IoU >= this; 1.0 = off (official).")


@dataclass(frozen=True, kw_only=True, slots=True)
class GenEvalConfig:
    enabled: bool = doc("Run GenEval (Table 2).")
    items_file: str | None = doc(
        "The official evaluation_metadata.jsonl; null: build items with the same recipe."
    )
    vocabulary: Literal["coco", "shapes"] = doc(
        "Classes of the built items: COCO's 80 (official) or the shapes world's."
    )
    prompts_per_task: int = doc("Samples per task before de-duplication (official: 100).")
    seed: int = doc("Recipe seed (official: 43).")
    images_per_prompt: int = doc("Images generated per prompt (official: 4).")
    resolution: int = doc("Generated side in pixels.")


@dataclass(frozen=True, kw_only=True, slots=True)
class GenEvalPPConfig:
    enabled: bool = doc("Run GenEval++ (Table 3; Echo-4o's VLM-judged benchmark, one image per item).")
    items_file: str | None = doc(
        "The official Geneval++.jsonl (Echo-4o test_scripts/, 280 lines, 7 tags x 40); null: write "
        "items in the same format from the shapes world (tiny preset)."
    )
    items_per_tag: int = doc("Shapes-world items written per tag when items_file is null.")
    seed: int = doc("Seed of the shapes-world items (generation seeds come from the run seed).")
    resolution: int = doc("Generated side in pixels.")
    judge_path: str | None = doc(
        "Local Qwen2.5-VL directory that judges each image (paper: Qwen2.5-VL-72B-Instruct; official: "
        "GPT-4.1); null: the exact shapes-world judge (shapes-world items only)."
    )


@dataclass(frozen=True, kw_only=True, slots=True)
class MMTConfig:
    enabled: bool = doc("Run the MMT-Bench fine-grained probes (Table 4).")
    tsv: str | None = doc(
        "MMT-Bench TSV (index, image base64, question, A..D, answer, category); null: build probes."
    )
    categories: dict[str, str] = doc("Our task name -> the TSV's category name (when reading a TSV).")
    questions_per_task: int = doc("Probes per task when building them.")
    seed: int = doc("Probe seed.")
    circular: bool = doc(
        "CircularEval: a question counts only if every rotation of its options is answered right."
    )
    judge_path: str | None = doc(
        "Instruction LLM that maps an ambiguous answer to an option (null: counts as wrong)."
    )
    resolution: int = doc("Probe image side in pixels.")


@dataclass(frozen=True, kw_only=True, slots=True)
class CaptionJudgeConfig:
    enabled: bool = doc("Run the pairwise caption-quality judge (Table 5).")
    judges: dict[str, str] = doc(
        "Judge name -> backend: 'scene_graph' (exact, synthetic bench images) or a local VLM directory."
    )
    pairs: list[list[str]] = doc(
        "[system, baseline] pairs whose captions of the same bench images are compared."
    )
    margin: float = doc("scene_graph: F1 difference below this is a tie.")


@dataclass(frozen=True, kw_only=True, slots=True)
class SelectionConfig:
    enabled: bool = doc("Pick each RL stage's checkpoint by validation score (else: its final step).")
    metric: Literal["overall", "clip", "longclip", "dinov2", "dinov3"] = doc(
        "Unified-Bench score on the val split that picks the checkpoint."
    )
    images: int = doc("Validation images scored per candidate (0 = all).")


@dataclass(frozen=True, kw_only=True, slots=True)
class EvalConfig:
    shards: int = doc("Generation shards per (system, benchmark); each is one job (a GPU on the cluster).")
    systems: dict[str, ExternalSystemConfig] = doc(
        "External baselines by path, evaluated beside rl.variants."
    )
    unified_bench: UnifiedBenchConfig = doc("Table 1.")
    geneval: GenEvalConfig = doc("Table 2.")
    geneval_pp: GenEvalPPConfig = doc("Table 3.")
    mmt: MMTConfig = doc("Table 4.")
    judge: CaptionJudgeConfig = doc("Table 5.")
    detector: DetectorConfig = doc("GenEval detector (GenEval++ is judged, see geneval_pp.judge_path).")
    selection: SelectionConfig = doc("Checkpoint selection.")
    seed_spread: dict[str, float] = doc(
        "Seed-to-seed spread (max - min over 3 run seeds) of the pretrained pair's score, keyed "
        "'<benchmark>.<metric>' (the RL rows read 'unified_bench.reward', the RL reward on the bench "
        "split), measured once with `python -m workflow_scripts.eval.seed_spread` and written here: the "
        "report's 'Does it learn?' rows count an RL stage's gain as real only above it; {}: not measured."
    )

    def __post_init__(self) -> None:
        if self.shards < 1:
            raise ValueError("shards must be >= 1")
        for pair in self.judge.pairs:
            if len(pair) != 2:
                raise ValueError(f"judge.pairs entries are [system, baseline], got {pair}")

    def benchmarks(self) -> list[str]:
        return [b for b in BENCHMARKS if getattr(self, b).enabled]

"""Data building configuration (LongCap-style long-caption dataset)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from workflow_scripts.config.typed import doc

SOURCES = ("synthetic", "photos", "folder")


@dataclass(frozen=True, kw_only=True, slots=True)
class SyntheticSourceConfig:
    """Procedural scenes of coloured shapes whose scene graph is known exactly."""

    enabled: bool = doc("Generate procedural scenes.")
    count: int = doc("Number of scenes.")
    canvas_size: int = doc("Rendered side in pixels (before resizing to training resolutions).")
    min_objects: int = doc("Fewest objects in a scene.")
    max_objects: int = doc("Most objects in a scene.")
    classes: list[str] = doc("Shape classes to draw from (see workflow_scripts.data.scenes.SHAPES).")
    colors: list[str] = doc("Colour names to draw from (GenEval's ten colours).")
    textures: list[str] = doc("Fill textures to draw from (solid, striped, dotted, checkered).")
    sizes: list[str] = doc("Object sizes to draw from (small, medium, large: box side 0.16, 0.24, 0.34).")

    def __post_init__(self) -> None:
        if not 1 <= self.min_objects <= self.max_objects:
            raise ValueError("need 1 <= min_objects <= max_objects")


@dataclass(frozen=True, kw_only=True, slots=True)
class PhotoSourceConfig:
    """Real photographs shipped inside an installed package (no download)."""

    enabled: bool = doc("Use the package's sample photographs.")
    package: Literal["skimage"] = doc("Package whose bundled images are read.")
    names: list[str] | None = doc("Image names to use; null = every bundled image that loads offline.")


@dataclass(frozen=True, kw_only=True, slots=True)
class FolderSourceConfig:
    """A user folder of images and/or webdataset tars; captions from sidecar .txt files if present."""

    enabled: bool = doc("Read images from a local folder.")
    path: str | None = doc("Folder with images (.png/.jpg/.jpeg/.webp) and/or webdataset .tar shards.")


@dataclass(frozen=True, kw_only=True, slots=True)
class SourcesConfig:
    synthetic: SyntheticSourceConfig = doc("Procedural shapes world.")
    photos: PhotoSourceConfig = doc("Photographs bundled with an installed package.")
    folder: FolderSourceConfig = doc("User folder / webdataset tars.")

    def enabled(self) -> list[str]:
        return [name for name in SOURCES if getattr(self, name).enabled]


@dataclass(frozen=True, kw_only=True, slots=True)
class CaptionModelConfig:
    path: str | None = doc("Local directory of the model (null when unused).")
    prompt: str = doc("Instruction given to the model.")
    max_new_tokens: int = doc("Generation length limit.")
    temperature: float = doc("Sampling temperature (0 = greedy).")
    batch_size: int = doc("Items per generate() call.")


@dataclass(frozen=True, kw_only=True, slots=True)
class CaptioningConfig:
    """Draft captioner per source, then an optional refiner (paper: InternVL-78B drafts, GPT-4o refines)."""

    draft: dict[str, Literal["scene_graph", "docstring", "sidecar", "vlm"]] = doc(
        "Draft captioner for each source: 'scene_graph' (exact, synthetic only), 'docstring' (the "
        "package's own description of a bundled photo), 'sidecar' (a .txt beside the image), 'vlm' "
        "(the draft_model)."
    )
    refine: Literal["none", "llm"] = doc("Refine drafts with refine_model ('none' keeps drafts).")
    draft_model: CaptionModelConfig = doc("Image-text-to-text model used by the 'vlm' drafter.")
    refine_model: CaptionModelConfig = doc("Instruction LLM used by the 'llm' refiner.")


@dataclass(frozen=True, kw_only=True, slots=True)
class FilterConfig:
    min_resolution: int = doc("Reject images whose shorter side is below this.")
    min_caption_words: int = doc("Reject captions shorter than this.")
    max_caption_words: int = doc("Reject captions longer than this.")
    phash_max_distance: int = doc(
        "Images whose 64-bit perceptual hashes differ in at most this many bits are near-duplicates; "
        "the first in (source, id) order is kept."
    )


@dataclass(frozen=True, kw_only=True, slots=True)
class SplitConfig:
    val_count: int = doc("Held-out validation images (checkpoint selection).")
    bench_count: int = doc("Held-out benchmark images (Unified-Bench; paper: 100).")


@dataclass(frozen=True, kw_only=True, slots=True)
class DataConfig:
    sources: SourcesConfig = doc("Image sources.")
    captioning: CaptioningConfig = doc("Captioners.")
    filters: FilterConfig = doc("Quality filters.")
    splits: SplitConfig = doc("Held-out split sizes; every other kept image is train.")
    resolutions: list[int] = doc("Square training resolutions written to the shards (centre crop).")
    shard_size: int = doc("Images per parquet shard.")

    def __post_init__(self) -> None:
        if not self.sources.enabled():
            raise ValueError("no image source is enabled under data.sources")
        for source in self.sources.enabled():
            if source not in self.captioning.draft:
                raise ValueError(f"data.captioning.draft has no captioner for enabled source '{source}'")
        if "scene_graph" in {v for k, v in self.captioning.draft.items() if k != "synthetic"}:
            raise ValueError("the 'scene_graph' captioner only applies to the synthetic source")


@dataclass(frozen=True, kw_only=True, slots=True)
class RLDataConfig:
    count: int = doc("Images in the RL split, taken from the train split (paper: 1K curated images).")
    rule: Literal["random", "caption_words", "sharpness"] = doc(
        "How they are chosen: seeded random, longest captions, or sharpest images (variance of the "
        "Laplacian). The paper's curation criteria are not published; the rule is recorded with the split."
    )

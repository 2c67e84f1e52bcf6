"""Image sources: the procedural shapes world, photographs bundled in packages, a user folder."""

from __future__ import annotations

import inspect
import json
import logging
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from workflow_scripts.data import images, scenes
from workflow_scripts.data.config import FolderSourceConfig, PhotoSourceConfig, SyntheticSourceConfig
from workflow_scripts.seeding import derive_seed

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")

# scikit-image photographs that ship inside its wheel (the others are fetched with pooch at run time)
SKIMAGE_PHOTOS = (
    "astronaut",
    "brick",
    "camera",
    "cat",
    "cell",
    "chelsea",
    "clock",
    "coffee",
    "coins",
    "grass",
    "gravel",
    "hubble_deep_field",
    "immunohistochemistry",
    "microaneurysms",
    "moon",
    "page",
    "retina",
    "rocket",
    "text",
)


@dataclass(frozen=True)
class RawItem:
    source: str
    item_id: str
    data: bytes
    meta: dict

    def row(self) -> dict:
        return {
            "source": self.source,
            "item_id": self.item_id,
            "data": self.data,
            "meta": json.dumps(self.meta),
        }


def synthetic(cfg: SyntheticSourceConfig, seed: int) -> Iterator[RawItem]:
    rng = np.random.default_rng(derive_seed(seed, "data", "synthetic"))
    for index in range(cfg.count):
        scene = scenes.sample_scene(
            rng,
            classes=cfg.classes,
            colors=cfg.colors,
            textures=cfg.textures,
            sizes=cfg.sizes,
            min_objects=cfg.min_objects,
            max_objects=cfg.max_objects,
        )
        png = images.png_bytes(scenes.render(scene, cfg.canvas_size))
        yield RawItem("synthetic", f"scene{index:06d}", png, {"scene": json.loads(scene.to_json())})


def photos(cfg: PhotoSourceConfig, seed: int) -> Iterator[RawItem]:
    del seed  # the bundled photographs are fixed
    import skimage.data

    for name in cfg.names or SKIMAGE_PHOTOS:
        loader = getattr(skimage.data, name, None)
        if loader is None:
            raise ValueError(f"data.sources.photos.names: skimage.data has no image '{name}'")
        try:
            array = loader()
        except Exception as err:  # e.g. ModuleNotFoundError: pooch, for images that need a download
            log.warning("photos: skipping %s: not available offline (%s)", name, err)
            continue
        yield RawItem(
            "photos", name, images.array_to_png(np.asarray(array)), {"description": docstring(loader)}
        )


def docstring(loader) -> str:
    """The description part of a scikit-image data loader's docstring (before its sections)."""
    text = inspect.cleandoc(loader.__doc__ or "")
    lines = []
    for line in text.splitlines():
        if line.strip() in {"Notes", "Returns", "Parameters", "References", "Examples"}:
            break
        lines.append(line.strip())
    paragraphs = " ".join(lines).split("  ")
    return " ".join(p.strip() for p in paragraphs if p.strip())


def folder(cfg: FolderSourceConfig, seed: int) -> Iterator[RawItem]:
    del seed
    if not cfg.path:
        raise ValueError("data.sources.folder.path is not set: point it at a folder of images or .tar shards")
    root = Path(cfg.path)
    if not root.is_dir():
        raise FileNotFoundError(f"data.sources.folder.path: {root} is not a directory")
    for path in sorted(root.rglob("*")):
        if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file():
            sidecar = path.with_suffix(".txt")
            meta = {"path": str(path)}
            if sidecar.exists():
                meta["sidecar"] = sidecar.read_text(errors="replace").strip()
            yield RawItem("folder", str(path.relative_to(root)), path.read_bytes(), meta)
        elif path.suffix == ".tar" and path.is_file():
            yield from _webdataset_tar(path, root)


def _webdataset_tar(path: Path, root: Path) -> Iterator[RawItem]:
    """Samples of a webdataset shard: members sharing a key; the image and an optional .txt caption."""
    groups: dict[str, dict[str, bytes]] = {}
    try:
        with tarfile.open(path) as tar:
            for member in tar:
                if not member.isfile():
                    continue
                key, _, ext = member.name.partition(".")
                handle = tar.extractfile(member)
                if handle is not None:
                    groups.setdefault(key, {})[ext.lower()] = handle.read()
    except (tarfile.TarError, OSError) as err:
        log.warning("folder: unreadable tar %s (%s)", path, err)
        yield RawItem("folder", str(path.relative_to(root)), b"", {"path": str(path), "tar_error": str(err)})
        return
    for key, parts in sorted(groups.items()):
        ext = next((e for e in parts if f".{e}" in IMAGE_SUFFIXES), None)
        if ext is None:
            continue
        meta = {"path": f"{path}#{key}"}
        if "txt" in parts:
            meta["sidecar"] = parts["txt"].decode(errors="replace").strip()
        yield RawItem("folder", f"{path.relative_to(root)}/{key}", parts[ext], meta)


COLLECTORS = {"synthetic": synthetic, "photos": photos, "folder": folder}

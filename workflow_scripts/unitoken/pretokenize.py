"""Pre-tokenisation's work units: LongCap and released-format records, each image VQ-encoded once."""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch
from PIL import Image

from workflow_scripts.data.shards import ShardDataset
from workflow_scripts.unitoken import records as token_files
from workflow_scripts.unitoken.config import PretokenizeConfig
from workflow_scripts.unitoken.records import upright
from workflow_scripts.unitoken.sequence import (
    RecordError,
    longcap_conversations,
    read_conversation_file,
)
from workflow_scripts.unitoken.vq import VQTokenizer, to_pixels

log = logging.getLogger(__name__)


def units(cfg: PretokenizeConfig, shards: Path, resolution: int) -> list[Callable[[], list[dict]]]:
    """Work units in a fixed order, each a loader of candidate records ({record_id, source, task, turns,
    image loaders}): one per LongCap image (its caption and generate records, read from the data shards at
    the tokenizer's resolution) and one per released-format record. Nothing is read until a unit is
    called, so each array element reads only its own units."""
    units: list[Callable[[], list[dict]]] = []
    if cfg.longcap:
        data = ShardDataset(shards, "train", resolution)
        units += [partial(_longcap_records, data, i, cfg) for i in range(len(data))]
    for path in cfg.conversations:
        entries = read_conversation_file(Path(path))
        units += [partial(_conversation_records, Path(path), n, entry) for n, entry in enumerate(entries)]
    return units


def _longcap_records(data: ShardDataset, index: int, cfg) -> list[dict]:
    record = data[index]
    turns = longcap_conversations(record.caption, cfg.caption_instruction, cfg.generate_instruction)

    def image() -> Image.Image:  # one loader for both records: the image is encoded once
        return record.image

    return [
        {
            "record_id": f"longcap:{record.image_id}:{task}",
            "source": "longcap",
            "task": task,
            "turns": conversation,
            "images": [image],
        }
        for task, conversation in turns.items()
    ]


def _conversation_records(path: Path, n: int, entry: dict) -> list[dict]:
    images = entry.get("image") or []
    images = [images] if isinstance(images, str) else images
    return [
        {
            "record_id": f"{path.name}:{n}",
            "source": path.name,
            "task": "conversation",
            "turns": entry.get("conversations") or [],
            "images": [partial(_open, path.parent / image) for image in images],
        }
    ]


def _open(path: Path) -> Image.Image:
    try:
        with Image.open(path) as image:
            return upright(image)
    except Exception as err:  # any unreadable file is a rejected record, never a crash
        raise RecordError(f"unreadable image {path}: {type(err).__name__}: {err}") from None


@torch.no_grad()
def encoded(load: Callable[[], Image.Image], done: dict, vq: VQTokenizer) -> tuple[bytes, torch.Tensor]:
    """(PNG bytes, VQ codes) of the image ``load`` gives; read and encoded once per loader."""
    if load not in done:
        image = load()
        codes, _, _ = vq.encode(to_pixels([image], vq.config.resolution))
        done[load] = (token_files.png(image), codes[0])
    return done[load]

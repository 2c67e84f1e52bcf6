"""UniToken's training task (align / joint / instruct) and its collate."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from workflow_scripts.train.batches import BatchPlan
from workflow_scripts.unitoken import records as token_files
from workflow_scripts.unitoken.config import UniTokenStageConfig
from workflow_scripts.unitoken.model import UniToken
from workflow_scripts.unitoken.objective import lm_loss
from workflow_scripts.unitoken.sequence import (
    IGNORE,
)

log = logging.getLogger(__name__)


@dataclass
class UniTokenTraining:
    """Next-token CE + z-loss on text and image codes; continuous positions and human turns are context."""

    stage: UniTokenStageConfig
    model: UniToken
    records: token_files.TokenRecords
    plan: BatchPlan
    z_weight: float

    @property
    def name(self) -> str:
        return f"unitoken_{self.stage.name}"

    def trainable(self) -> torch.nn.Module:
        model = self.model
        model.requires_grad_(self.stage.trainable == "all")
        model.vision.requires_grad_(True)
        model.adapter.requires_grad_(True)
        # frozen in every stage (released): the VQ tokenizer and SigLIP's patch/position embeddings;
        # SigLIP's pooling head is unused (the adapter reads every patch)
        model.lm.model.vqmodel.requires_grad_(False)
        tower = getattr(model.vision, "vision_model", model.vision)
        tower.embeddings.requires_grad_(False)
        if getattr(tower, "head", None) is not None:
            tower.head.requires_grad_(False)
        return model

    def param_groups(self, model: torch.nn.Module) -> list[dict]:
        vision = {id(p) for p in model.vision.parameters()}
        params = [p for p in model.parameters() if p.requires_grad]
        return [
            {"params": [p for p in params if id(p) not in vision], "lr_scale": 1.0},
            {"params": [p for p in params if id(p) in vision], "lr_scale": self.stage.vision_lr_scale},
        ]

    def micro_batches(self, step: int, rank: int, world: int) -> list[dict[str, torch.Tensor]]:
        return [
            collate([self.records[s.index] for s in chunk], self.model)
            for chunk in self.plan.micro_batches(step, rank, world)
        ]

    def loss(self, model: torch.nn.Module, batch: dict[str, torch.Tensor], step: int):
        device = next(model.parameters()).device
        batch = {k: (v.to(device) if v is not None else None) for k, v in batch.items()}
        logits = model(batch["input_ids"], batch["attention_mask"], batch["pixel_values"])
        loss, parts = lm_loss(logits, batch["labels"], self.z_weight)
        return loss, {k: v.item() for k, v in parts.items()}

    def export(self, model: torch.nn.Module, out_dir: Path, *, final: bool) -> None:
        model.save_pretrained(out_dir)


def collate(records: list[dict], model: UniToken) -> dict[str, torch.Tensor | None]:
    """Right-padded ids (pad token, label IGNORE, attention 0) and every image of the batch, in order."""
    longest = max(len(r["input_ids"]) for r in records)
    pad = model.layout.ids.pad
    ids = torch.full((len(records), longest), pad, dtype=torch.long)
    labels = torch.full((len(records), longest), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(records), longest), dtype=torch.long)
    for n, r in enumerate(records):
        length = len(r["input_ids"])
        ids[n, :length] = torch.tensor(r["input_ids"])
        labels[n, :length] = torch.tensor(r["labels"])
        mask[n, :length] = 1
    images = [image for r in records for image in r["images"]]
    pixels = model.vision_pixels(images) if images else None
    return {"input_ids": ids, "labels": labels, "attention_mask": mask, "pixel_values": pixels}

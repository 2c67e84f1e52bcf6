"""UniToken's stage entries: VQ tokenizer training, pre-tokenisation (a job array), the three training
stages, and the system record the benchmarks read."""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
from PIL import Image

from workflow_scripts import atomic
from workflow_scripts.config.root import UmmConfig
from workflow_scripts.data.build import write_parquet
from workflow_scripts.data.shards import ShardDataset
from workflow_scripts.launch.job import JobContext, JobSpec
from workflow_scripts.pretrain.common import finalizer, identity, stage_paths
from workflow_scripts.seeding import derive_seed, seed_everything
from workflow_scripts.train.batches import BatchPlan
from workflow_scripts.train.loop import train
from workflow_scripts.unitoken import records as token_files
from workflow_scripts.unitoken.config import UniTokenStageConfig
from workflow_scripts.unitoken.model import UniToken
from workflow_scripts.unitoken.objective import lm_loss
from workflow_scripts.unitoken.sequence import (
    IGNORE,
    Layout,
    RecordError,
    longcap_conversations,
    read_conversation_file,
)
from workflow_scripts.unitoken.tiny import vq_config
from workflow_scripts.unitoken.vq import VQTokenizer, psnr, to_images, to_pixels

log = logging.getLogger(__name__)


# --- the tiny VQ tokenizer ------------------------------------------------------------------------------
@dataclass
class VQTraining:
    """Reconstruction MSE + the quantizer's codebook/commitment loss on the data stage's images."""

    tokenizer: VQTokenizer
    images: ShardDataset
    plan: BatchPlan
    commitment: float
    name: str = "unitoken_vq"

    def trainable(self) -> torch.nn.Module:
        # start the codebook on encoder outputs, so every entry is near the data from step 0
        count = self.tokenizer.codebook_size
        with torch.no_grad():
            pixels = to_pixels(
                [self.images[i % len(self.images)].image for i in range(max(8, count // 16))],
                self.tokenizer.config.resolution,
            )
            vqvae = self.tokenizer.vqvae
            latents = vqvae.quant_conv(vqvae.encoder(pixels)).permute(0, 2, 3, 1).flatten(0, 2)
            generator = torch.Generator().manual_seed(self.plan.seed)
            picks = torch.randint(len(latents), (count,), generator=generator)
            vqvae.quantize.embedding.weight.copy_(latents[picks])
        return self.tokenizer.train()

    def micro_batches(self, step: int, rank: int, world: int) -> list[torch.Tensor]:
        side = self.tokenizer.config.resolution
        return [
            to_pixels([self.images[s.index].image for s in chunk], side)
            for chunk in self.plan.micro_batches(step, rank, world)
        ]

    def loss(self, model: torch.nn.Module, batch: torch.Tensor, step: int):
        device = next(model.parameters()).device
        batch = batch.to(device)
        reconstructed, codebook_loss = model(batch)
        mse = torch.mean((reconstructed - batch) ** 2)
        return mse + self.commitment * codebook_loss, {"mse": mse.item(), "codebook": codebook_loss.item()}

    def export(self, model: torch.nn.Module, out_dir: Path, *, final: bool) -> None:
        model.save_pretrained(out_dir)


def train_vq(ctx: JobContext) -> dict:
    cfg = ctx.cfg.unitoken
    spec = cfg.models.tiny_vq
    seed_everything(derive_seed(ctx.cfg.seed, "unitoken_vq", "init"))
    tokenizer = VQTokenizer(vq_config(spec))
    images = ShardDataset(ctx.input("shards"), "train", spec.resolution)
    loop = cfg.vq_train.loop
    plan = BatchPlan(
        len(images), loop.batch_size, loop.micro_batch_size, derive_seed(ctx.cfg.seed, "unitoken_vq")
    )
    task = VQTraining(tokenizer, images, plan, cfg.vq_train.commitment)
    paths = stage_paths(ctx)
    run_identity = identity(ctx)

    def finalize(tmp: Path) -> None:
        quality = reconstruction_quality(VQTokenizer.from_pretrained(tmp), ctx.input("shards"), tmp)
        atomic.write_json(tmp / "reconstruction.json", quality)
        finalizer(ctx, paths, run_identity, quality)(tmp)

    summary = train(task, loop, paths, identity=run_identity, finalize=finalize)
    return {**summary, **json.loads((paths.final / "reconstruction.json").read_text())}


@torch.no_grad()
def reconstruction_quality(tokenizer: VQTokenizer, shards: Path, out_dir: Path) -> dict:
    """Mean PSNR and codebook use on the validation split, and a strip of originals over reconstructions."""
    val = ShardDataset(shards, "val", tokenizer.config.resolution)
    if not len(val):
        raise ValueError(f"{shards}: the val split is empty; set data.splits.val_count >= 1 to measure PSNR")
    originals = to_pixels([val[i].image for i in range(len(val))], tokenizer.config.resolution)
    codes, _, _ = tokenizer.encode(originals)
    reconstructed = tokenizer.decode(codes)
    shown = min(8, len(val))
    strip = Image.new("RGB", (tokenizer.config.resolution * shown, tokenizer.config.resolution * 2))
    for n, (a, b) in enumerate(
        zip(to_images(originals[:shown]), to_images(reconstructed[:shown]), strict=True)
    ):
        strip.paste(a, (n * a.width, 0))
        strip.paste(b, (n * a.width, a.height))
    strip.save(out_dir / "reconstructions.png")
    return {
        "val_images": len(val),
        "psnr_db": float(psnr(originals, reconstructed).mean()),
        "codes_used": int(codes.unique().numel()),
        "codebook_size": tokenizer.codebook_size,
    }


# --- pre-tokenisation -----------------------------------------------------------------------------------
def pretokenize_shards(cfg: UmmConfig) -> int:
    """unitoken_pretokenize runs as a job array: one element per token shard."""
    return cfg.unitoken.pretokenize.shards


def _units(ctx: JobContext, resolution: int) -> list[Callable[[], list[dict]]]:
    """Work units in a fixed order, each a loader of candidate records ({record_id, source, task, turns,
    image loaders}): one per LongCap image (its caption and generate records, read from the data shards at
    the tokenizer's resolution) and one per released-format record. Nothing is read until a unit is
    called, so each array element reads only its own units."""
    cfg = ctx.cfg.unitoken.pretokenize
    units: list[Callable[[], list[dict]]] = []
    if cfg.longcap:
        data = ShardDataset(ctx.input("shards"), "train", resolution)
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
            return image.convert("RGB")
    except Exception as err:  # any unreadable file is a rejected record, never a crash
        raise RecordError(f"unreadable image {path}: {type(err).__name__}: {err}") from None


@torch.no_grad()
def _encoded(load: Callable[[], Image.Image], done: dict, vq: VQTokenizer) -> tuple[bytes, torch.Tensor]:
    """(PNG bytes, VQ codes) of the image ``load`` gives; read and encoded once per loader."""
    if load not in done:
        image = load()
        codes, _, _ = vq.encode(to_pixels([image], vq.config.resolution))
        done[load] = (token_files.png(image), codes[0])
    return done[load]


def pretokenize(ctx: JobContext) -> dict:
    """Shard k: work units k, k + shards, ...; each image VQ-encoded once; bad records logged and skipped."""
    cfg = ctx.cfg.unitoken
    shard, shards = ctx.spec.array_index or 0, cfg.pretokenize.shards
    out = ctx.output("index").parent
    layout = Layout.from_dirs(ctx.input("lm"), ctx.input("vision"))
    vq = VQTokenizer.from_pretrained(ctx.input("vq"))
    rows, rejected = [], []
    for unit in _units(ctx, vq.config.resolution)[shard::shards]:
        done: dict = {}  # images the unit's records share
        for candidate in unit():
            try:
                images = [_encoded(load, done, vq) for load in candidate["images"]]
                input_ids, labels = layout.encode(candidate["turns"], [codes for _, codes in images])
                if len(input_ids) > cfg.pretokenize.max_length:
                    raise RecordError(f"{len(input_ids)} tokens > max_length {cfg.pretokenize.max_length}")
                if all(label == IGNORE for label in labels):
                    raise RecordError("nothing to learn: no gpt turn")
            except RecordError as err:
                rejected.append({"record_id": candidate["record_id"], "reason": str(err)})
                log.warning("rejected %s: %s", candidate["record_id"], err)
                continue
            rows.append(
                {
                    "record_id": candidate["record_id"],
                    "source": candidate["source"],
                    "task": candidate["task"],
                    "input_ids": input_ids,
                    "labels": labels,
                    "images": [png for png, _ in images],
                }
            )
    out.mkdir(parents=True, exist_ok=True)
    write_parquet(token_files.shard_file(out, shard), rows, token_files.SCHEMA)
    atomic.write_text(token_files.rejected_file(out, shard), "".join(json.dumps(r) + "\n" for r in rejected))
    return {
        "shard": shard,
        "index": [
            {
                "record_id": r["record_id"],
                "shard": shard,
                "row": n,
                "length": len(r["input_ids"]),
                "source": r["source"],
                "task": r["task"],
            }
            for n, r in enumerate(rows)
        ],
        "rejected": rejected,
    }


def gather_pretokenized(spec: JobSpec, results: list[dict]) -> None:
    index = [row for r in sorted(results, key=lambda r: r["shard"]) for row in r["index"]]
    rejected = [row for r in results for row in r["rejected"]]
    out = Path(spec.outputs["index"])
    write_parquet(out, index, token_files.INDEX_SCHEMA)
    atomic.write_json(
        out.parent / "summary.json",
        {
            "records": len(index),
            "tokens": sum(r["length"] for r in index),
            "by_task": dict(Counter(r["task"] for r in index)),
            "rejected": len(rejected),
            "rejected_by_reason": dict(Counter(r["reason"].split(":")[0] for r in rejected)),
        },
    )


# --- the three training stages --------------------------------------------------------------------------
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


def train_stage(ctx: JobContext) -> dict:
    name = ctx.spec.wildcards["unitoken_stage"]
    cfg = ctx.cfg.unitoken
    (stage,) = [s for s in cfg.stages if s.name == name]
    seed_everything(derive_seed(ctx.cfg.seed, "unitoken", name, "init"))
    if "start" in ctx.spec.inputs:
        model = UniToken.from_pretrained(ctx.input("start"))
    else:  # the first stage: the published LM and vision tower, a fresh adapter, our VQ encoder
        model = UniToken.assemble(ctx.input("lm"), ctx.input("vision"))
        model.lm.model.vqmodel.load_state_dict(
            VQTokenizer.from_pretrained(ctx.input("vq")).vqvae.state_dict()
        )
    records = token_files.TokenRecords(ctx.input("tokens").parent, stage.tasks)
    plan = BatchPlan(
        len(records),
        stage.loop.batch_size,
        stage.loop.micro_batch_size,
        derive_seed(ctx.cfg.seed, "unitoken", name),
    )
    task = UniTokenTraining(stage, model, records, plan, cfg.z_loss)
    paths = stage_paths(ctx)
    run_identity = identity(ctx)
    extra = {"records": len(records), "tasks": stage.tasks}
    summary = train(
        task, stage.loop, paths, identity=run_identity, finalize=finalizer(ctx, paths, run_identity, extra)
    )
    return {**summary, **extra}


def unitoken_system(ctx: JobContext) -> dict:
    """The record the benchmarks load: UniToken after its last stage, with the VQ tokenizer's decoder."""
    record = {
        "variant": "unitoken",
        "family": "unitoken",
        "model": str(ctx.input("model")),
        "vq": str(ctx.input("vq")),
        "config_hash": ctx.config_hash,
    }
    atomic.write_json(ctx.output("system"), record)
    return record

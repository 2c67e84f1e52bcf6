"""UniToken speed on this machine: training tokens/s and image-generation codes/s.

``python bench/bench_unitoken.py [RUN_DIR] [--steps N] [--images N]`` on a run whose UniToken stages
finished (default ``results/tiny``, after ``snakemake unitoken``). Training: the joint stage's task
(its records, micro-batches, loss and backward, AdamW step) from the last stage's weights; tokens/s
counts non-padding input tokens. Generation: the system the benchmarks use draws benchmark-style
prompts (CFG = two decoding streams, top-k over image codes, VQ decode); codes/s counts sampled codes.
The first step / image is warm-up and not timed.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from workflow_scripts.config.loader import parse
from workflow_scripts.seeding import derive_seed
from workflow_scripts.train.batches import BatchPlan
from workflow_scripts.train.optim import build_optimizer
from workflow_scripts.unitoken.model import UniToken
from workflow_scripts.unitoken.records import TokenRecords
from workflow_scripts.unitoken.system import load_unitoken_system
from workflow_scripts.unitoken.training import UniTokenTraining


def training_tokens_per_second(run: Path, cfg, steps: int) -> dict:
    (stage,) = [s for s in cfg.unitoken.stages if s.name == "joint"] or cfg.unitoken.stages[-1:]
    record = json.loads((run / "variants" / "unitoken.json").read_text())
    model = UniToken.from_pretrained(record["model"])
    records = TokenRecords(run / "unitoken" / "tokens", stage.tasks)
    loop = stage.loop
    plan = BatchPlan(len(records), loop.batch_size, loop.micro_batch_size, derive_seed(cfg.seed, "bench"))
    task = UniTokenTraining(stage, model, records, plan, cfg.unitoken.z_loss)
    trainable = task.trainable().train()
    optimizer = build_optimizer(task.param_groups(trainable), loop.optim)
    tokens, elapsed = 0, 0.0
    for step in range(steps + 1):
        began = time.perf_counter()
        batches = task.micro_batches(step, 0, 1)
        for batch in batches:
            loss, _ = task.loss(trainable, batch, step)
            (loss / len(batches)).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step:  # step 0 warms up
            elapsed += time.perf_counter() - began
            tokens += sum(int(b["attention_mask"].sum()) for b in batches)
    return {"steps": steps, "tokens": tokens, "seconds": elapsed, "tokens_per_second": tokens / elapsed}


def generation_codes_per_second(run: Path, cfg, images: int) -> dict:
    record = json.loads((run / "variants" / "unitoken.json").read_text())
    system = load_unitoken_system(record, cfg.unitoken, device=torch.device("cpu"), dtype=torch.float32)
    prompts = [f"a {c} circle and a {c} square" for c in ("red", "blue", "green", "yellow")] * images
    system.draw(prompts[:1], [0], 64)  # warm-up
    began = time.perf_counter()
    system.draw(prompts[:images], list(range(images)), 64)
    seconds = time.perf_counter() - began
    codes = images * system.vq.grid**2
    return {
        "images": images,
        "codes": codes,
        "seconds": seconds,
        "codes_per_second": codes / seconds,
        "cfg_scale": cfg.unitoken.sampling.cfg_scale,
        "top_k": cfg.unitoken.sampling.image_top_k,
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("run", nargs="?", default="results/tiny", type=Path)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--images", type=int, default=8)
    args = parser.parse_args()
    cfg = parse(json.loads((args.run / "config.resolved.json").read_text()))
    torch.manual_seed(0)
    result = {
        "torch_threads": torch.get_num_threads(),
        "training": training_tokens_per_second(args.run, cfg, args.steps),
        "generation": generation_codes_per_second(args.run, cfg, args.images),
    }
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

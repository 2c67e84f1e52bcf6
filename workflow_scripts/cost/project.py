"""What a run will cost before it runs: projected GPU-hours per stage from counted FLOPs.

    python -m workflow_scripts.cost --configfile paper.example.yaml [--config KEY=VALUE ...]

Per stage, the FLOPs of one optimiser step (one item for evaluation) are summed from the forward FLOPs of
each model stack at the stage's real shapes (:mod:`workflow_scripts.cost.flops`: one layer of each stack
counted by ``torch.utils.flop_counter`` on the meta device, times the published depth), times

* 3 for a trained stack (forward + backward for activations + backward for weights),
* 2 for a frozen stack the loss back-propagates through (LoRA bases, a frozen decoder under a reward):
  the weight gradients are skipped but the activation gradients are not (LoRA's own matmuls are <1%),
* 1 for a frozen forward (conditioning, reference models, sampling, rewards);

then times the stage's optimiser steps (items for evaluation) and jobs, divided by the sustained
throughput ``launcher.cost.peak_tflops x launcher.cost.mfu``. ASSUMPTIONS lists what else is assumed.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from workflow_scripts.config.root import UmmConfig

# stated in the command's output and on the report
ASSUMPTIONS = (
    "architectures: the published paper models (workflow_scripts/tiny/published.py) at every preset; "
    "a tiny-preset projection is what its schedule would cost at paper widths",
    "FLOPs: torch.utils.flop_counter on one layer per stack on the meta device (2 per multiply-add; "
    "matmuls, convolutions, attention), times the published depth; elementwise ops not counted",
    "training = 3x forward for trained stacks, 2x for frozen stacks back-propagated through (LoRA bases), "
    "1x for frozen forwards; gradient-checkpointing recompute is not counted (it is inside the MFU)",
    "sequences at their configured maximum lengths (captions max_caption_tokens / max_text_tokens / "
    "max_new_tokens, a 64-token chat template): an upper bound for shorter captions",
    "attention counted over the full square (a causal kernel computes about half of it)",
    "generation with a KV cache costs one forward over prompt + generated tokens; decoding is memory-bound, "
    "so real generation runs below the stated MFU",
    "classifier-free guidance doubles every DiT forward when guidance_scale > 1",
    "reward / colour towers at 224 px (DINOv3 at 256 px); Qwen2.5-VL images rounded to 28 px multiples",
    "captioning: one 448 px tile per image, prompts at 1.5 tokens per word, the folder's size from "
    "launcher.cost.folder_images",
    "external evaluation systems cost as much as ours; UniToken's VQ decoding is not counted; "
    "data building and scoring are not projected",
)
TEMPLATE_TOKENS = 64  # chat template + instruction around an image or caption
# the paper's stated compute (../shared/reference/uae-paper.md, "Compute"): 8 nodes x 8 H800, about a week
PAPER_GPUS = 64
PAPER_DAYS = 7.0


@dataclass(frozen=True)
class StageCost:
    stage: str  # the stage, with its wildcards in brackets
    jobs: int
    gpus: int  # per job, from the launcher's resources
    flops_per_unit: float  # one optimiser step, or one evaluation item
    units: int  # optimiser steps, or items
    unit: str  # "step" | "item"

    @property
    def flops(self) -> float:
        return self.flops_per_unit * self.units * self.jobs


def gpu_hours(flops: float, peak_tflops: float, mfu: float) -> float:
    """GPU-hours to compute ``flops`` at ``mfu`` of a ``peak_tflops`` (dense) accelerator."""
    return flops / (peak_tflops * 1e12 * mfu) / 3600.0


# --- one model pass per sample -------------------------------------------------------------------------
def _cfg_mult(guidance: float) -> int:
    return 2 if guidance > 1.0 else 1


def _understand(resolution: int, text: int, logits: int) -> tuple[int, int]:
    """(vision tower, LLM) forward FLOPs of Qwen2.5-VL on one image plus ``text`` tokens."""
    from workflow_scripts.cost import flops as F

    _, image_tokens = F.qwen_image_tokens(resolution)
    return F.qwen_vision(resolution), F.qwen_text(image_tokens + TEMPLATE_TOKENS + text, logits)


def _caption(resolution: int, new_tokens: int) -> int:
    """Generating one caption of ``new_tokens`` for one image."""
    vision, llm = _understand(resolution, new_tokens, new_tokens)
    return vision + llm


def _condition(cfg: UmmConfig, guidance: float) -> int:
    """The release's conditioning: the LLM over the (padded) caption and, under guidance, the negative prompt,
    then the projector."""
    from workflow_scripts.cost import flops as F

    tokens = _text_tokens(cfg)
    return (F.qwen_text(tokens, 0) + _projector(cfg, tokens)) * _cfg_mult(guidance)


def _text_tokens(cfg: UmmConfig) -> int:
    """Reader tokens of one prompt (the LLM reads all of them)."""
    return cfg.models.decoder.max_text_tokens + TEMPLATE_TOKENS


def _dit_text_tokens(cfg: UmmConfig) -> int:
    """Text tokens the DiT reads: the projector merges runs of projector_merge reader states."""
    return -(-_text_tokens(cfg) // cfg.models.decoder.projector_merge)


def _projector(cfg: UmmConfig, tokens: int) -> int:
    from workflow_scripts.cost import flops as F

    decoder = cfg.models.decoder
    return F.projector(tokens, decoder.projector_hidden_size, decoder.projector_merge)


def _generate_image(cfg: UmmConfig, resolution: int, steps: int, guidance: float) -> int:
    """Conditioning + ``steps`` guided DiT forwards + the VAE decode of one image."""
    from workflow_scripts.cost import flops as F

    dit = F.dit(resolution, _dit_text_tokens(cfg)) * _cfg_mult(guidance)
    return _condition(cfg, guidance) + steps * dit + F.vae(resolution, "decode")


def _rewards(names: Iterable[str], resolution: int | None = None) -> int:
    from workflow_scripts.cost import flops as F
    from workflow_scripts.tiny import published as P

    towers = {
        "clip": lambda: F.vit(P.CLIP_L14, 224),
        "longclip": lambda: F.vit(P.LONGCLIP_L, 224),
        "dinov2": lambda: F.vit(P.DINOV2_L, 224),
        "dinov3": lambda: F.vit(P.DINOV3_L, 256),
    }
    return sum(towers[n]() for n in names if n in towers)


# --- per stage: FLOPs of one optimiser step (one item for evaluation) ----------------------------------
def _pretrain_encoder(cfg: UmmConfig, wildcards: Mapping[str, str]) -> tuple[float, int, str]:
    spec = cfg.pretrain.encoder
    caption = spec.max_caption_tokens
    vision, llm = _understand(spec.resolution, caption, TEMPLATE_TOKENS + caption)
    per = vision * (3 if spec.train_vision_tower else 1) + llm * (3 if spec.method == "full" else 2)
    return per * spec.loop.batch_size, spec.loop.steps, "step"


def _pretrain_decoder(cfg: UmmConfig, wildcards: Mapping[str, str]) -> tuple[float, int, str]:
    from workflow_scripts.cost import flops as F

    spec = cfg.pretrain.decoder
    (phase,) = [p for p in spec.phases if p.name == wildcards["phase"]]
    tokens = _text_tokens(cfg)
    condition = F.qwen_text(tokens, 0) + 3 * _projector(cfg, tokens)
    dit = F.dit(phase.resolution, _dit_text_tokens(cfg)) * (3 if spec.transformer == "full" else 2)
    per = condition + F.vae(phase.resolution, "encode") + dit
    return per * phase.loop.batch_size, phase.loop.steps, "step"


def _rl_coldstart(cfg: UmmConfig, wildcards: Mapping[str, str]) -> tuple[float, int, str]:
    from workflow_scripts.cost import flops as F

    spec = cfg.rl.coldstart
    mult = _cfg_mult(spec.guidance_scale)
    vision, llm = _understand(spec.resolution, cfg.models.decoder.max_text_tokens, 0)
    dit = F.dit(spec.resolution, _dit_text_tokens(cfg)) * mult
    # every sampling step forward, the last grad_steps back-propagated into the LoRA (x2 in all)
    sampling = spec.sample_steps * dit + spec.grad_steps * dit
    reward = 2 * (F.vae(spec.resolution, "decode") + _rewards(spec.alphas))
    per = vision + 2 * llm + sampling + reward
    return per * spec.loop.batch_size, spec.loop.steps, "step"


def _rl_encoder(cfg: UmmConfig, wildcards: Mapping[str, str]) -> tuple[float, int, str]:
    spec = cfg.rl.encoder
    group = spec.grpo.group_size
    vision, llm = _understand(spec.resolution, spec.max_new_tokens, spec.max_new_tokens)
    rollout = group * (vision + llm)
    reconstruct = group * _generate_image(
        cfg, spec.resolution, spec.reconstruction_steps, spec.guidance_scale
    )
    alphas = cfg.rl.rewards.reconstruction.alphas
    reward = (group + 1) * _rewards(alphas)  # each reconstruction and the original
    update = spec.grpo.inner_iterations * group * (vision + 2 * llm)
    reference = group * (vision + llm) if spec.grpo.beta else 0
    per = rollout + reconstruct + reward + update + reference
    return per * spec.loop.batch_size, spec.loop.steps, "step"


def _rl_decoder(cfg: UmmConfig, wildcards: Mapping[str, str]) -> tuple[float, int, str]:
    from workflow_scripts.cost import flops as F

    spec = cfg.rl.decoder
    group = spec.grpo.group_size
    caption = _caption(spec.resolution, cfg.inference.caption.max_new_tokens)
    sample = group * _generate_image(cfg, spec.resolution, spec.train_steps, spec.guidance_scale)
    reward = (group + 1) * _rewards(cfg.rl.rewards.reconstruction.alphas)
    trained_steps = max(1, math.ceil(spec.train_steps * spec.train_timestep_fraction))
    dit = F.dit(spec.resolution, _dit_text_tokens(cfg)) * _cfg_mult(spec.guidance_scale)
    update = spec.grpo.inner_iterations * group * trained_steps * 2 * dit
    reference = group * trained_steps * dit if spec.grpo.beta else 0
    per = caption + sample + reward + update + reference
    return per * spec.loop.batch_size, spec.loop.steps, "step"


def _unitoken_item(cfg: UmmConfig, bench: str) -> int:
    """One evaluation item of the UniToken system: Chameleon-7B writing an image's VQ codes (a 512 px image:
    32 x 32 codes and an end-of-row token per row) under guidance, and reading images through SigLIP."""
    from workflow_scripts.cost import flops as F
    from workflow_scripts.tiny import published as P

    vq = P.CHAMELEON_7B["vq"]
    side = vq["resolution"] // 2 ** (len(vq["channel_multiplier"]) - 1)
    generate = _cfg_mult(cfg.unitoken.sampling.cfg_scale) * F.chameleon(TEMPLATE_TOKENS + side * side + side)
    s = P.SIGLIP_SO400M
    seen = (s["image_size"] // s["patch_size"]) ** 2

    def read(new_tokens: int) -> int:
        return F.siglip() + F.chameleon(seen + TEMPLATE_TOKENS + new_tokens)

    if bench == "unified_bench":
        return read(cfg.unitoken.sampling.max_caption_tokens) + generate
    return read(8) if bench == "mmt" else generate


def _eval_generate(cfg: UmmConfig, wildcards: Mapping[str, str]) -> tuple[float, int, str]:
    bench = wildcards["bench"]
    image = cfg.inference.image
    ev = cfg.eval
    if bench == "unified_bench":
        spec = ev.unified_bench
        items = cfg.data.splits.bench_count if spec.own_split else 100
        caption = _caption(spec.resolution, cfg.inference.caption.max_new_tokens)
        per = caption + _generate_image(cfg, spec.resolution, image.steps, image.guidance_scale)
    elif bench == "geneval":
        spec = ev.geneval
        prompts = 6 * spec.prompts_per_task
        if spec.vocabulary == "coco":
            prompts = min(prompts, 553)  # the official file drops duplicates
        items = prompts * spec.images_per_prompt
        per = _generate_image(cfg, spec.resolution, image.steps, image.guidance_scale)
    elif bench == "geneval_pp":
        spec = ev.geneval_pp
        items = 7 * spec.items_per_tag
        per = _generate_image(cfg, spec.resolution, image.steps, image.guidance_scale)
    elif bench == "mmt":
        spec = ev.mmt
        items = spec.questions_per_task * len(spec.categories) * (4 if spec.circular else 1)
        vision, llm = _understand(spec.resolution, 64, 8)
        per = vision + llm
    else:
        raise ValueError(f"no cost model for benchmark {bench!r} (workflow_scripts/cost/project.py)")
    if wildcards.get("system") == "unitoken":
        per = _unitoken_item(cfg, bench)
    return per, items, "item"


def _unitoken_train(cfg: UmmConfig, wildcards: Mapping[str, str]) -> tuple[float, int, str]:
    from workflow_scripts.cost import flops as F

    (spec,) = [s for s in cfg.unitoken.stages if s.name == wildcards["unitoken_stage"]]
    llm = F.chameleon(cfg.unitoken.pretokenize.max_length)
    trained = spec.trainable == "all"
    per = F.siglip() * 3 + llm * (3 if trained else 2)
    return per * spec.loop.batch_size, spec.loop.steps, "step"


def _vae_train(cfg: UmmConfig, wildcards: Mapping[str, str]) -> tuple[float, int, str]:
    from workflow_scripts.cost import flops as F

    res = cfg.vae.resolution
    per = 3 * (F.vae(res, "encode") + F.vae(res, "decode"))
    return per * cfg.vae.loop.batch_size, cfg.vae.loop.steps, "step"


def _prompt_tokens(prompt: str) -> int:
    """A prompt's tokens: its words x 1.5 (byte-level BPE on English prose) plus the chat template."""
    return TEMPLATE_TOKENS + math.ceil(1.5 * len(prompt.split()))


def _data_caption(cfg: UmmConfig, wildcards: Mapping[str, str]) -> tuple[float, int, str]:
    """Per image: the VLM draft (InternVL3-78B on one 448 px tile) and the LLM refinement (Qwen2.5-72B)."""
    from workflow_scripts.cost import flops as F
    from workflow_scripts.tiny import published as P

    source = wildcards["source"]
    captioning = cfg.data.captioning
    sources = cfg.data.sources
    images = {
        "synthetic": sources.synthetic.count,
        "photos": len(sources.photos.names or []),
        "folder": cfg.launcher.cost.folder_images or 0,
    }[source]
    per = 0
    if captioning.draft[source] == "vlm":
        draft = captioning.draft_model
        seq = P.INTERNVL3_78B["image_seq_length"] + _prompt_tokens(draft.prompt) + draft.max_new_tokens
        per += F.internvl_vision() + F.large_llm(P.INTERNVL3_78B, seq, draft.max_new_tokens)
    if captioning.refine == "llm":
        refine = captioning.refine_model
        seq = _prompt_tokens(refine.prompt) + captioning.draft_model.max_new_tokens + refine.max_new_tokens
        per += F.large_llm(P.QWEN25_72B, seq, refine.max_new_tokens)
    return per, images, "image"


MODELS: dict[str, Callable[[UmmConfig, Mapping[str, str]], tuple[float, int, str]]] = {
    "data_caption": _data_caption,
    "vae_train": _vae_train,
    "pretrain_encoder": _pretrain_encoder,
    "pretrain_decoder": _pretrain_decoder,
    "rl_coldstart": _rl_coldstart,
    "rl_encoder": _rl_encoder,
    "rl_decoder": _rl_decoder,
    "eval_generate": _eval_generate,
    "unitoken_train": _unitoken_train,
}
TRAINING = ("vae_train", "pretrain_encoder", "pretrain_decoder", "rl_coldstart", "rl_encoder", "rl_decoder",
            "unitoken_train")  # fmt: skip


def planned_jobs(cfg: UmmConfig) -> list[tuple[str, dict[str, str]]]:
    """The costed jobs a config runs, from the config alone (the report has no DAG); the command checks them
    against Snakemake's dry run."""
    jobs: list[tuple[str, dict[str, str]]] = [
        ("data_caption", {"source": s}) for s in cfg.data.sources.enabled()
    ]
    if cfg.trains_vae:
        jobs.append(("vae_train", {}))
    jobs.append(("pretrain_encoder", {}))
    jobs += [("pretrain_decoder", {"phase": p.name}) for p in cfg.pretrain.decoder.phases]
    variants = cfg.rl.variants
    if cfg.rl.coldstart.enabled and any(v != "none" for v in variants):
        jobs.append(("rl_coldstart", {}))
    if any("2a" in v for v in variants):
        jobs.append(("rl_encoder", {}))
    jobs += [("rl_decoder", {"variant": v}) for v in variants if "2b" in v]
    systems = [*variants, *cfg.eval.systems, *(["unitoken"] if cfg.unitoken.enabled else [])]
    benches = [b for b in ("unified_bench", "geneval", "geneval_pp", "mmt") if getattr(cfg.eval, b).enabled]
    jobs += [("eval_generate", {"system": s, "bench": b}) for s in systems for b in benches]
    if cfg.unitoken.enabled:
        jobs += [("unitoken_train", {"unitoken_stage": s.name}) for s in cfg.unitoken.stages]
    return jobs


def _label(stage: str, wildcards: Mapping[str, str]) -> str:
    return f"{stage}[{', '.join(f'{k}={v}' for k, v in sorted(wildcards.items()))}]" if wildcards else stage


def project(cfg: UmmConfig, jobs: Iterable[tuple[str, Mapping[str, str]]]) -> list[StageCost]:
    """One row per costed stage (per wildcard value where the cost differs); evaluation jobs are grouped by
    benchmark (every system costs the same)."""
    from workflow_scripts.catalog import resources

    rows: dict[str, StageCost] = {}
    for stage, wildcards in jobs:
        if stage not in MODELS:
            continue
        # every UAE-family system costs the same per item; UniToken's own model does not
        keyed = {k: v for k, v in wildcards.items() if k != "system" or v == "unitoken"}
        label = _label(stage, keyed)
        if label in rows:
            row = rows[label]
            rows[label] = StageCost(
                row.stage, row.jobs + 1, row.gpus, row.flops_per_unit, row.units, row.unit
            )
            continue
        per, units, unit = MODELS[stage](cfg, wildcards)
        if not per * units:  # e.g. a source captioned without a model, or a folder of unknown size
            continue
        res = resources(cfg, stage, dict(wildcards))
        gpus = res.nodes * res.gpus_per_node
        if stage == "eval_generate":
            gpus = gpus * cfg.eval.shards  # an array of shards, one job each
        rows[label] = StageCost(label, 1, gpus, float(per), int(units), unit)
    return list(rows.values())


@dataclass(frozen=True)
class Projection:
    rows: list[StageCost]
    peak_tflops: float
    mfu: float

    def hours(self, row: StageCost) -> float:
        return gpu_hours(row.flops, self.peak_tflops, self.mfu)

    @property
    def total_hours(self) -> float:
        return sum(self.hours(r) for r in self.rows)

    @property
    def training_hours(self) -> float:
        return sum(self.hours(r) for r in self.rows if r.stage.split("[")[0] in TRAINING)

    def records(self) -> list[dict]:
        """Rows for the report: stage, jobs, GPUs, FLOPs per unit, units, GPU-hours, wall hours."""
        return [
            {
                "stage": r.stage,
                "jobs": r.jobs,
                "gpus": r.gpus,
                "flops_per_unit": r.flops_per_unit,
                "unit": r.unit,
                "units": r.units,
                "gpu_hours": self.hours(r),
                "wall_hours": self.hours(r) / r.gpus if r.gpus else None,
            }
            for r in self.rows
        ]


def projection(cfg: UmmConfig, jobs: Iterable[tuple[str, Mapping[str, str]]] | None = None) -> Projection:
    cost = cfg.launcher.cost
    rows = project(cfg, planned_jobs(cfg) if jobs is None else jobs)
    return Projection(rows, cost.peak_tflops, cost.mfu)


def paper_budget_hours() -> float:
    return PAPER_GPUS * PAPER_DAYS * 24.0


def _hours(value: float) -> str:
    return f"{value:.1f}" if value >= 10 else f"{value:.3g}"


def table(p: Projection, dag_jobs: Mapping[str, int] | None = None) -> str:
    head = ["stage", "jobs", "GPUs/job", "FLOPs/unit", "unit", "units", "GPU-hours (projected)", "wall h"]
    rows = [head]
    for r in p.records():
        jobs = str(r["jobs"])
        rows.append(
            [
                r["stage"],
                jobs,
                str(r["gpus"]),
                f"{r['flops_per_unit']:.3e}",
                r["unit"],
                str(r["units"]),
                _hours(r["gpu_hours"]),
                "-" if r["wall_hours"] is None else _hours(r["wall_hours"]),
            ]
        )
    rows.append(["training total", "", "", "", "", "", _hours(p.training_hours), ""])
    rows.append(["total", "", "", "", "", "", _hours(p.total_hours), ""])
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m workflow_scripts.cost", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--configfile", nargs="+", default=[], help="config files, as for snakemake")
    parser.add_argument("--config", nargs="+", default=[], metavar="KEY=VALUE", help="as for snakemake")
    parser.add_argument("--no-dag", action="store_true", help="skip the check against Snakemake's dry run")
    args = parser.parse_args(argv)
    from workflow_scripts.config.loader import parse, resolve
    from workflow_scripts.config.typed import ConfigError
    from workflow_scripts.dag.run import PLAN_ONLY
    from workflow_scripts.launch.plan import jobs_in_dag, user_config

    try:
        user = user_config(args.configfile, args.config)
        cfg = parse(resolve({k: v for k, v in user.items() if k != PLAN_ONLY}))
        jobs = planned_jobs(cfg)
        if not args.no_dag:
            dag = [(s, w) for s, w in jobs_in_dag(user) if s in MODELS]
            missing = sorted({_label(s, w) for s, w in dag} ^ {_label(s, w) for s, w in jobs})
            if missing:
                print(f"# note: the DAG and the cost model's job list differ on: {', '.join(missing)}")
            jobs = dag
        p = projection(cfg, jobs)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(
        f"# run '{cfg.run_name}' (preset {cfg.preset}): projected GPU-hours at {p.mfu:.0%} MFU of "
        f"{p.peak_tflops:g} TFLOP/s (launcher.cost); unit = optimiser step, or evaluation item"
    )
    print(table(p))
    budget = paper_budget_hours()
    if cfg.preset == "paper":
        print(
            f"# paper budget: {PAPER_GPUS} H800 x about {PAPER_DAYS:g} days = {budget:.0f} GPU-hours "
            f"(uae-paper.md, 'Compute'); this projection: {p.total_hours:.0f} GPU-hours "
            f"({p.total_hours / budget:.0%} of it), "
            f"{p.total_hours / PAPER_GPUS / 24:.1f} days on {PAPER_GPUS} GPUs"
        )
    print("# assumptions:")
    for line in ASSUMPTIONS:
        print(f"#  - {line}")
    return 0

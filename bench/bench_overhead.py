"""Pipeline overhead: ``python bench/bench_overhead.py [--stand-ins DIR] [--steps N] [--threads T]``.

Two ratios and one cost, each with its raw timings (median seconds per optimiser step over ``--steps``
steps, after ``--warmup`` steps that are not timed):

1. training step: the pipeline's loop (``train/loop.py`` ``train()``: engine, accumulation, clipping,
   NaN guard, metrics, tqdm, checkpointer) running the Stage-1b decoder flow-matching task, against a
   bare loop on the same model, batches and optimiser (the task's ``micro_batches`` and ``loss``, then
   backward, clip, AdamW step, zero_grad; nothing else). Target <= 1.05.
2. RL step: one Stage-2a (encoder GRPO) and one Stage-2b (decoder Flow-GRPO) optimiser step through
   ``train()``, against that step's own rollout sampling and reward alone (the same sampling and reward
   functions called directly). Target <= 1.3. The bare GRPO update (rollout + forward/backward/step, no
   pipeline) is printed too, so the remainder can be split into the update's compute and the pipeline's.
3. Stage 2b's captions (``--only captions``): the captions of a tiny-preset-length run over distinct
   pictures, one ``caption`` call per picture (as each rollout captioned its new pictures before) against
   the stage's ``prepare_captions`` (batched, once before the first rollout).

A pipeline step is the time between two consecutive ``micro_batches`` calls of the task, so it covers
everything the loop does per step. Checkpoints: ``every_steps`` is set to the run's length, so the only
save (and the final export) happen after the last timed step; neither loop saves inside the window.

Models: the tiny encoder/decoder built as tests/conftest.py's ``tiny_models`` does, and with
``--stand-ins DIR`` the real-shape stand-ins of ``python -m workflow_scripts.tiny.paper_shapes DIR --only
Qwen2.5-VL-3B-Instruct stable-diffusion-3.5-large [clip-vit-large-patch14]`` (cut depth, published
widths) at ``--resolution`` px with micro-batch 1. Without a CLIP-L stand-in in DIR the reward uses the
tiny CLIP backbone. Stand-in trims, so a step takes seconds on CPU: global batch 2, G = 2, 2a captions of
16 tokens and 2-step reconstructions, 2b 2-step trajectories and 32-token captions, fp32, one process,
gradient checkpointing off (on both sides). The reward is CLIP-only at both sizes.

Stage 2b's update is, by Flow-GRPO's design, several times its sampling: every trained denoising step is
a guided policy forward plus backward plus a guided reference forward, against one guided forward while
sampling. The 'pipeline / bare GRPO step' line isolates what the pipeline itself adds.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
import yaml
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from workflow_scripts.config.loader import deep_merge, parse, resolve  # noqa: E402
from workflow_scripts.train.loop import StagePaths, train  # noqa: E402

STAGE_NAMES = {"2a": "encoder GRPO", "2b": "decoder Flow-GRPO"}
TRAIN_TARGET = 1.05
RL_TARGET = 1.3
WORDS = ["a red circle", "a small blue square left of a green triangle", "a star", "two big yellow stars"]


# ------------------------------------------------------------------------------------------- timing
class Stopwatch:
    """The task as the loop sees it, noting the time of every ``micro_batches`` call (a step's start)."""

    def __init__(self, task: Any) -> None:
        self._task = task
        self.starts: list[float] = []

    def micro_batches(self, step: int, rank: int, world: int):
        self.starts.append(time.perf_counter())
        return self._task.micro_batches(step, rank, world)

    def __getattr__(self, name: str):  # name, trainable, loss, export, optional param_groups
        return getattr(self._task, name)


def _loop_for(loop, steps: int):
    """``loop`` run for ``steps`` steps, its one checkpoint at the end (outside the timed window)."""
    checkpoint = dataclasses.replace(loop.checkpoint, every_steps=steps)
    return dataclasses.replace(loop, steps=steps, checkpoint=checkpoint)


def time_pipeline(make_task: Callable[[], Any], loop, steps: int, warmup: int, root: Path) -> list[float]:
    """Seconds of each of ``steps`` pipeline steps after ``warmup`` untimed ones."""
    watch = Stopwatch(make_task())
    total = warmup + steps + 1  # the last step only closes the previous one's interval
    root.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(dir=root))  # fresh: train() would resume from an earlier run's checkpoint
    paths = StagePaths(root / "checkpoints", root / "metrics.jsonl", root / "final")
    train(watch, _loop_for(loop, total), paths, identity="bench")
    return list(np.diff(watch.starts)[warmup : warmup + steps])


def time_bare(make_task: Callable[[], Any], loop, steps: int, warmup: int) -> list[float]:
    """The same task's batches and loss in a bare loop: forward, backward, clip, AdamW, zero_grad."""
    task = make_task()
    model = task.trainable()
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optim = loop.optim
    # the pipeline's optimiser (train/optim.py): AdamW, foreach off
    optimizer = torch.optim.AdamW(
        params,
        lr=optim.lr,
        betas=tuple(optim.betas),
        eps=optim.eps,
        weight_decay=optim.weight_decay,
        foreach=False,
    )
    times = []
    for step in range(warmup + steps):
        began = time.perf_counter()
        micro = task.micro_batches(step, 0, 1)
        for batch in micro:
            loss, _ = task.loss(model, batch, step)
            (loss / len(micro)).backward()
        if optim.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params, optim.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - began)
    return times[warmup:]


def time_calls(call: Callable[[int], Any], steps: int, warmup: int) -> list[float]:
    times = []
    for step in range(warmup + steps):
        began = time.perf_counter()
        call(step)
        times.append(time.perf_counter() - began)
    return times[warmup:]


# -------------------------------------------------------------------------------------------- setup
@dataclasses.dataclass
class Setup:
    """Configuration and model directories of one bench size (tiny, or real-shape stand-ins)."""

    label: str
    cfg: Any
    encoder: Path
    decoder: Path
    backbones: dict[str, Path]  # reward backbone name -> directory
    resolution: int
    records: int


def _pictures(n: int, size: int) -> list[SimpleNamespace]:
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        block = rng.integers(0, 255, (6, 6, 3), dtype=np.uint8)
        image = Image.fromarray(block).resize((size, size), Image.Resampling.NEAREST)
        out.append(SimpleNamespace(image=image, caption=WORDS[i % len(WORDS)], image_id=str(i)))
    return out


def tiny_setup(root: Path, *, overrides: dict | None = None) -> Setup:
    """The tiny preset's encoder, decoder and CLIP backbone, built by the library code."""
    from workflow_scripts.tiny import uae as tiny
    from workflow_scripts.tiny.backbones import build_tiny

    cfg = _clip_only(parse(resolve(deep_merge({"preset": "tiny"}, overrides or {}))))
    synthetic = cfg.data.sources.synthetic
    if not (root / "decoder").exists():
        corpus = tiny.caption_corpus(
            0, synthetic.classes, synthetic.colors, synthetic.textures, scenes_count=300
        )
        tiny.build_encoder(cfg.models.encoder.tiny, 0, corpus, root / "encoder")
        tiny.build_decoder(cfg.models.decoder.tiny, 0, root / "decoder")
        build_tiny("clip", cfg.models.reward.clip.tiny, 0, root / "clip")
    resolution = cfg.pretrain.decoder.phases[0].resolution
    return Setup("tiny", cfg, root / "encoder", root / "decoder", {"clip": root / "clip"}, resolution, 8)


def _clip_only(cfg):
    """``cfg`` with a CLIP-only reconstruction reward: one backbone keeps the reward's cost comparable
    across sizes (the release scores with CLIP ViT-L/14)."""
    rewards = cfg.rl.rewards
    reconstruction = dataclasses.replace(rewards.reconstruction, weight=1.0, alphas={"clip": 1.0})
    rl = dataclasses.replace(cfg.rl, rewards=dataclasses.replace(rewards, reconstruction=reconstruction))
    return dataclasses.replace(cfg, rl=rl)


def stand_in_setup(folder: Path, tiny_root: Path, resolution: int) -> Setup:
    """The paper preset on the real-shape stand-ins, trimmed to micro-batch 1 at ``resolution`` px."""
    paths = yaml.safe_load((folder / "paper.stand_in.yaml").read_text())
    for name in ("Qwen2.5-VL-3B-Instruct", "stable-diffusion-3.5-large"):
        if not (folder / name).exists():
            raise SystemExit(
                f"{folder / name} is missing: build it with `python -m workflow_scripts.tiny.paper_shapes "
                f"{folder} --only Qwen2.5-VL-3B-Instruct stable-diffusion-3.5-large`"
            )
    clip = folder / "clip-vit-large-patch14"
    backbones = {"clip": clip} if clip.exists() else tiny_setup(tiny_root).backbones
    small_loop = {"batch_size": 2, "micro_batch_size": 1, "mixed_precision": "no", "distributed": "ddp"}
    small_loop["gradient_checkpointing"] = False  # the bare loop has none either; same on both sides
    trim = {
        # 2b captions up to max_text_tokens: a random-weight LLM never stops, and 512 tokens of a 152k-row
        # head per caption would take minutes on CPU
        "models": {"decoder": {"max_text_tokens": 32}},
        "rl": {
            "encoder": {
                "resolution": resolution,
                "max_new_tokens": 16,
                "reconstruction_steps": 2,
                "grpo": {"group_size": 2},
                "loop": small_loop,
            },
            "decoder": {
                "resolution": resolution,
                "train_steps": 2,
                "grpo": {"group_size": 2},
                "loop": small_loop,
            },
        },
        "inference": {"caption": {"max_new_tokens": 16}},
        "data": {"resolutions": sorted({resolution, 512, 1024})},
    }
    # the documented stand-in run: paper.example.yaml, then the stand-ins' model paths over it
    example = yaml.safe_load((REPO / "paper.example.yaml").read_text())
    cfg = _clip_only(
        parse(resolve(deep_merge(deep_merge(deep_merge(example, paths), trim), {"preset": "paper"})))
    )
    setup = Setup(
        "stand-ins",
        cfg,
        folder / "Qwen2.5-VL-3B-Instruct",
        folder / "stable-diffusion-3.5-large",
        backbones,
        resolution,
        2,
    )
    return with_train_loop(setup, resolution=resolution, **small_loop)


def with_train_loop(setup: Setup, resolution: int | None = None, **loop) -> Setup:
    """``setup`` with Stage 1b's first phase at ``resolution`` and its loop fields replaced by ``loop``."""
    cfg = setup.cfg
    phase = cfg.pretrain.decoder.phases[0]
    phase = dataclasses.replace(
        phase, resolution=resolution or phase.resolution, loop=dataclasses.replace(phase.loop, **loop)
    )
    decoder = dataclasses.replace(cfg.pretrain.decoder, phases=(phase,))
    cfg = dataclasses.replace(cfg, pretrain=dataclasses.replace(cfg.pretrain, decoder=decoder))
    return dataclasses.replace(setup, cfg=cfg, records=max(setup.records, phase.loop.batch_size))


def _reading(cfg) -> dict:
    from workflow_scripts.models.conditioning import ConditioningSpec
    from workflow_scripts.models.encoder import CaptionPrompt

    return {
        "instruction": CaptionPrompt.of(cfg.inference.caption),
        "conditioning": ConditioningSpec.of(cfg.models.decoder),
        "max_text_tokens": cfg.models.decoder.max_text_tokens,
    }


def _load_pair(setup: Setup):
    from workflow_scripts.models.decoder import load_decoder
    from workflow_scripts.models.encoder import load_encoder

    encoder = load_encoder(setup.encoder)
    decoder = load_decoder(
        setup.decoder,
        llm_hidden_size=encoder.model.config.text_config.hidden_size,
        projector_hidden_size=setup.cfg.models.decoder.projector_hidden_size,
        projector_seed=1,
    )
    return encoder, decoder


def _reward(setup: Setup):
    from workflow_scripts.reward.backbones import load_backbone
    from workflow_scripts.reward.functions import RewardModel

    backbones = {name: load_backbone(name, path) for name, path in setup.backbones.items()}
    return RewardModel(setup.cfg.rl.rewards, backbones)


def flow_task(setup: Setup):
    """Stage 1b's task (pretrain/decoder_flow.py) on ``setup.records`` synthetic pictures."""
    from workflow_scripts.pretrain.decoder_flow import DecoderFlowMatching
    from workflow_scripts.train.batches import BatchPlan

    cfg = setup.cfg
    phase = cfg.pretrain.decoder.phases[0]
    encoder, decoder = _load_pair(setup)
    records = _pictures(setup.records, phase.resolution)
    plan = BatchPlan(len(records), phase.loop.batch_size, phase.loop.micro_batch_size, 0)
    return DecoderFlowMatching(
        cfg.pretrain.decoder, phase, cfg.models.decoder, encoder, decoder, records, plan, 0, setup.decoder
    )


def encoder_rl_task(setup: Setup):
    """Stage 2a's task (rl/encoder_rl.py); as many pictures as one global batch."""
    from workflow_scripts.rl.common import SampleWriter
    from workflow_scripts.rl.encoder_rl import EncoderGRPO
    from workflow_scripts.train.batches import BatchPlan

    cfg = setup.cfg.rl.encoder
    encoder, decoder = _load_pair(setup)
    for part in (decoder.transformer, decoder.vae, decoder.projector):
        part.requires_grad_(False).eval()
    records = _pictures(cfg.loop.batch_size, cfg.resolution)
    return EncoderGRPO(
        cfg,
        encoder,
        decoder,
        _reward(setup),
        records,
        BatchPlan(len(records), cfg.loop.batch_size, cfg.loop.micro_batch_size, 0),
        0,
        samples=SampleWriter(Path("unused"), cfg.grpo, enabled=False),
        start=setup.encoder,
        reader=setup.cfg.rl.reader,
        **_reading(setup.cfg),
    )


def decoder_rl_task(setup: Setup):
    """Stage 2b's task (rl/decoder_rl.py), captioner and caption reader the same encoder."""
    from workflow_scripts.rl.common import SampleWriter
    from workflow_scripts.rl.decoder_rl import DecoderGRPO
    from workflow_scripts.train.batches import BatchPlan

    cfg = setup.cfg.rl.decoder
    encoder, decoder = _load_pair(setup)
    encoder.model.requires_grad_(False).eval()
    decoder.vae.requires_grad_(False)
    # one global batch of pictures: their captions are written in the warm-up step, as a run writes
    # every caption before its first rollout (caption_cost measures that once-per-run cost)
    records = _pictures(cfg.loop.batch_size, cfg.resolution)
    return DecoderGRPO(
        cfg,
        encoder,
        encoder,
        decoder,
        _reward(setup),
        records,
        BatchPlan(len(records), cfg.loop.batch_size, cfg.loop.micro_batch_size, 0),
        0,
        samples=SampleWriter(Path("unused"), cfg.grpo, enabled=False),
        start=setup.decoder,
        metadata={},
        **_reading(setup.cfg),
    )


# ------------------------------------------------------------------- rollout sampling + reward alone
def encoder_sampling(task) -> Callable[[int], Any]:
    """Per step: for each picture of the step, the G captions, their reconstructions and rewards
    (``EncoderGRPO._sample``: generate, condition, decoder.generate, reward); nothing of the update."""
    task.trainable()  # the LoRA-wrapped policy samples, as in the stage
    task.policy.eval()

    @torch.no_grad()
    def call(step: int) -> None:
        for chunk in task.plan.micro_batches(step, 0, 1):
            for s in chunk:
                task._sample(s.position, s.index)

    return call


def decoder_sampling(task) -> Callable[[int], Any]:
    """Per step: for each picture, its (cached) caption read by the LLM, G SDE trajectories, decoding,
    rewards: the calls ``DecoderGRPO._rollout`` makes, without advantages or the update."""
    from workflow_scripts.models.conditioning import condition
    from workflow_scripts.reward.functions import RewardInputs
    from workflow_scripts.reward.pixels import to_unit
    from workflow_scripts.rl.flow import initial_noise, sample
    from workflow_scripts.seeding import derive_seed

    task.trainable()
    task.policy.eval()
    cfg, G = task.cfg, task.cfg.grpo.group_size

    @torch.no_grad()
    def call(step: int) -> None:
        task.prepare_captions(step, 0, 1)  # captions nothing after the first call, as in the stage
        for chunk in task.plan.micro_batches(step, 0, 1):
            for s in chunk:
                record = task.dataset[s.index]
                caption = task.captions[s.index]
                embeds, negative = condition(
                    task.text_encoder, task.decoder.projector, [caption], task.conditioning
                )
                seeds = [derive_seed(task.seed, "images", s.position, g) for g in range(G)]
                noise, generators = initial_noise(task.decoder.latent_shape(cfg.resolution), seeds)
                pooled = task.decoder.pooled(G).to(embeds.device, embeds.dtype)
                traj = sample(
                    task.policy,
                    embeds.expand(G, -1, -1),
                    negative,
                    pooled,
                    noise,
                    task.schedule,
                    guidance=cfg.guidance_scale,
                    noise_level=cfg.noise_level,
                    generators=generators,
                )
                images = task.decoder.to_pixels(traj.latents[-1])
                task.reward(RewardInputs(to_unit([record.image] * G), images, [caption] * G))

    return call


def caption_cost(setup: Setup, steps: int) -> list[str]:
    """Stage 2b's captions of a run of ``steps`` steps over distinct pictures: one ``caption`` call per
    picture (as each rollout captioned its new pictures before) against ``prepare_captions`` (batches of
    ``caption_batch_size``, once before the first rollout). Returns the report lines."""
    task = decoder_rl_task(setup)
    cfg = task.cfg
    pictures = _pictures(steps * cfg.loop.batch_size, cfg.resolution)
    task.dataset = pictures
    task.plan = dataclasses.replace(task.plan, num_samples=len(pictures))
    task.cfg = dataclasses.replace(cfg, loop=dataclasses.replace(cfg.loop, steps=steps))
    task.trainable()
    began = time.perf_counter()
    for index, picture in enumerate(pictures):
        task.captioner.caption(
            [picture.image],
            task.instruction,
            temperature=cfg.caption_temperature,
            max_new_tokens=task.max_text_tokens,
            generator_seed=[task.caption_seed(index)],
        )
    alone = time.perf_counter() - began
    began = time.perf_counter()
    task.prepare_captions(0, 0, 1)
    batched = time.perf_counter() - began
    return [
        f"[{setup.label}] Stage 2b captions of {len(pictures)} pictures "
        f"({steps} steps x {cfg.loop.batch_size}):",
        f"  one at a time     {alone:.3f} s  ({alone / steps:.3f} s inside each step before)",
        f"  batched, once     {batched:.3f} s  (caption_batch_size {cfg.caption_batch_size}; "
        f"{alone / batched:.1f}x faster)",
    ]


# ---------------------------------------------------------------------------------------- reporting
@dataclasses.dataclass
class Ratio:
    name: str
    pipeline: list[float]
    reference: list[float]  # the bare loop, or sampling + reward alone
    target: float
    extra: dict[str, list[float]] = dataclasses.field(default_factory=dict)

    @property
    def value(self) -> float:
        return statistics.median(self.pipeline) / statistics.median(self.reference)

    def lines(self, reference_name: str) -> list[str]:
        def fmt(times: list[float]) -> str:
            low, high = min(times), max(times)
            return f"median {statistics.median(times):.4f} s  (min {low:.4f}, max {high:.4f}, n {len(times)})"

        out = [
            f"{self.name}:",
            f"  pipeline          {fmt(self.pipeline)}",
            f"  {reference_name:<17} {fmt(self.reference)}",
        ]
        out += [f"  {k:<17} {fmt(v)}" for k, v in self.extra.items()]
        if self.extra:  # RL: how much of the step the pipeline adds over the bare GRPO update
            bare = statistics.median(next(iter(self.extra.values())))
            out.append(f"  pipeline / bare GRPO step {statistics.median(self.pipeline) / bare:.3f}")
        verdict = "ok" if self.value <= self.target else "MISSES target"
        out.append(f"  ratio {self.value:.3f} (target <= {self.target}) {verdict}")
        return out


def train_ratio(setup: Setup, steps: int, warmup: int, root: Path, repeats: int = 1) -> Ratio:
    """Bare loop and pipeline, alternated ``repeats`` times (a shared machine's load drifts)."""
    loop = setup.cfg.pretrain.decoder.phases[0].loop
    make = lambda: flow_task(setup)  # noqa: E731
    bare, pipeline = [], []
    for _ in range(repeats):
        bare += time_bare(make, loop, steps, warmup)
        pipeline += time_pipeline(make, loop, steps, warmup, root / "train")
    name = f"[{setup.label}] training step, Stage 1b decoder flow matching"
    return Ratio(name, pipeline, bare, TRAIN_TARGET)


def rl_ratio(setup: Setup, stage: str, steps: int, warmup: int, root: Path, repeats: int = 1) -> Ratio:
    """Sampling + reward alone, the bare GRPO step and the pipeline step, alternated ``repeats`` times."""
    make, sampling = RL_TASKS[stage]
    cfg = setup.cfg.rl.encoder if stage == "2a" else setup.cfg.rl.decoder
    alone, bare, pipeline = [], [], []
    for _ in range(repeats):
        alone += time_calls(sampling(make(setup)), steps, warmup)
        bare += time_bare(lambda: make(setup), cfg.loop, steps, warmup)
        pipeline += time_pipeline(lambda: make(setup), cfg.loop, steps, warmup, root / f"rl{stage}")
    name = f"[{setup.label}] RL step, Stage {stage} ({STAGE_NAMES[stage]})"
    return Ratio(name, pipeline, alone, RL_TARGET, {"bare GRPO step": bare})


@dataclasses.dataclass
class Linear:
    """A one-weight regression: a step costs almost nothing, so pipeline - bare is the loop's own cost."""

    plan: Any = None
    name: str = "linear"

    def __post_init__(self) -> None:
        from workflow_scripts.train.batches import BatchPlan

        self.plan = BatchPlan(8, 4, 2, 0)

    def trainable(self) -> torch.nn.Module:
        torch.manual_seed(0)
        return torch.nn.Linear(1, 1)

    def micro_batches(self, step: int, rank: int, world: int) -> list[torch.Tensor]:
        chunks = self.plan.micro_batches(step, rank, world)
        return [torch.tensor([[float(s.index)] for s in chunk]) for chunk in chunks]

    def loss(self, model, x, step: int):
        return ((model(x / 10) - (3 * x / 10 - 1)) ** 2).mean(), {"x_mean": float(x.mean())}

    def export(self, model, out_dir: Path, *, final: bool) -> None:
        out_dir.mkdir(parents=True, exist_ok=True)


def fixed_cost(loop, steps: int, root: Path) -> tuple[float, float]:
    """Median seconds per step of the bare loop and of the pipeline on :class:`Linear` (the same loop
    settings as Stage 1b's: metrics every ``log_every`` steps, clipping, schedule)."""
    loop = dataclasses.replace(loop, batch_size=4, micro_batch_size=2)
    bare = time_bare(Linear, loop, steps, 5)
    pipeline = time_pipeline(Linear, loop, steps, 5, root / "fixed")
    return statistics.median(bare), statistics.median(pipeline)


RL_TASKS = {"2a": (encoder_rl_task, encoder_sampling), "2b": (decoder_rl_task, decoder_sampling)}


def run(setup: Setup, steps: int, warmup: int, root: Path, parts: tuple[str, ...], repeats: int):
    """The selected ratios of ``setup`` (and the caption cost's lines), each yielded as soon as measured."""
    if "train" in parts:
        yield train_ratio(setup, steps, warmup, root, repeats)
    for stage in ("2a", "2b"):
        if stage in parts:
            yield rl_ratio(setup, stage, steps, warmup, root, repeats)
    if "captions" in parts:
        yield caption_cost(setup, setup.cfg.rl.decoder.loop.steps)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stand-ins", type=Path, help="directory of paper_shapes stand-ins (also measured)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per measurement (median)")
    parser.add_argument("--repeats", type=int, default=2, help="alternations of the compared loops")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads for every measurement")
    parser.add_argument("--resolution", type=int, default=256, help="stand-ins' image resolution")
    parser.add_argument(
        "--only",
        nargs="*",
        default=["train", "2a", "2b", "captions"],
        choices=["train", "2a", "2b", "captions"],
    )
    parser.add_argument("--no-tiny", action="store_true", help="measure the stand-ins only")
    parser.add_argument("--workdir", type=Path, help="scratch directory (default: a temporary one)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    root = args.workdir or Path(tempfile.mkdtemp(prefix="umm-overhead-"))
    setups = [] if args.no_tiny else [tiny_setup(root / "tiny_models")]
    if args.stand_ins:
        setups.append(stand_in_setup(args.stand_ins, root / "tiny_models", args.resolution))
    print(
        f"torch threads {torch.get_num_threads()}, {args.steps} timed steps after {args.warmup} warm-up, "
        f"{args.repeats} alternations; median s per optimiser step"
    )
    if setups:
        bare, pipeline = fixed_cost(setups[0].cfg.pretrain.decoder.phases[0].loop, 200, root)
        print(
            f"the loop's own cost per step (one-weight model, 200 steps): bare {bare * 1e3:.2f} ms, "
            f"pipeline {pipeline * 1e3:.2f} ms, difference {(pipeline - bare) * 1e3:.2f} ms"
        )
    for setup in setups:
        for ratio in run(setup, args.steps, args.warmup, root / setup.label, tuple(args.only), args.repeats):
            if isinstance(ratio, list):  # caption_cost's lines
                print("\n".join(ratio), flush=True)
                continue
            reference = "bare loop" if ratio.target == TRAIN_TARGET else "sampling+reward"
            print("\n".join(ratio.lines(reference)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

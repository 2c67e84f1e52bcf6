"""The stage catalog: every stage declared once.

An entry names the stage, its entry point (``module:function`` taking a
:class:`~workflow_scripts.harness.context.JobContext`, imported only when a job runs), an optional gather
step (run once with every task's result), how it fans out (the size of its job array, read from the
config) and its *view*: the part of the resolved config its outputs depend on. The view's hash is a
Snakemake param, so editing a value re-runs exactly the stages whose view contains it (and, through their
outputs, what depends on them); an entry point checks the view it reads still hashes to what the DAG
recorded, and reads its settings from that view: the paths a view function reads are all its entry
point's ``ctx.cfg`` lets it read (``config/scope.py``), so a value read but missing from the view fails
the job instead of silently not re-running the stage when edited. The launcher, the DAG helpers, the
warehouse and the hashing all read this table; a test checks that every rule has an entry and every
entry a rule.

Adding a stage: write its rule in ``rules/``, its package under ``workflow_scripts/``, and one
:class:`Stage` in :data:`STAGES` below (README, "Adding a stage").
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from workflow_scripts.config.loader import digest
from workflow_scripts.config.root import UmmConfig
from workflow_scripts.config.scope import Scope, trace
from workflow_scripts.harness.footprint import Footprint

View = Callable[..., dict[str, Any]]


def _tiny_model(cfg: Mapping[str, Any], component: str) -> dict[str, Any]:
    models = cfg["models"]
    if component.startswith("unitoken_"):
        unitoken = cfg["unitoken"]["models"]
        spec = {"lm": unitoken["tiny_lm"], "vision": unitoken["tiny_vision"]}[
            component.removeprefix("unitoken_")
        ]
        if component == "unitoken_lm":  # its vocabulary holds one token per code, its VQ-VAE the shapes
            spec = {**spec, "vq": unitoken["tiny_vq"]}
    elif component in models:
        spec = models[component]["tiny"]
    else:  # a reward backbone: a stand-in for published weights, the same whatever the run's seed
        return {"seed": cfg["reward_train"]["seed"], "spec": models["reward"][component]["tiny"]}
    view = {"seed": cfg["seed"], "spec": spec}
    if component in ("encoder", "unitoken_lm"):
        # the tiny tokenizer is trained on captions of the configured shapes world
        view["vocabulary"] = {
            k: cfg["data"]["sources"]["synthetic"][k] for k in ("classes", "colors", "textures")
        }
    if component == "unitoken_lm":
        # the tokenizer's image-layout tokens (grid sizes, new-line: the released Lumina-mGPT layout);
        # a new layout rebuilds the tiny LM of an existing run
        view["image_layout"] = "lumina-mgpt"
    return view


def _data_collect(cfg: Mapping[str, Any], source: str) -> dict[str, Any]:
    return {"seed": cfg["seed"], "source": cfg["data"]["sources"][source]}


def _data_caption(cfg: Mapping[str, Any], source: str) -> dict[str, Any]:
    captioning = cfg["data"]["captioning"]
    view = {"seed": cfg["seed"], "draft": captioning["draft"][source], "refine": captioning["refine"]}
    if view["draft"] == "vlm":
        view["draft_model"] = captioning["draft_model"]
    if view["refine"] == "llm":
        view["refine_model"] = captioning["refine_model"]
    return view


def _data_build(cfg: Mapping[str, Any]) -> dict[str, Any]:
    data = cfg["data"]
    return {"seed": cfg["seed"], **{k: data[k] for k in ("filters", "splits", "resolutions", "shard_size")}}


def _vae_train(cfg: Mapping[str, Any]) -> dict[str, Any]:
    return {"seed": cfg["seed"], "vae": cfg["vae"]}


def _reward_train(cfg: Mapping[str, Any], backbone: str) -> dict[str, Any]:
    return {"reward_train": cfg["reward_train"]}  # its own seed (RewardTrainConfig.seed), not the run's


def _pretrain_encoder(cfg: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "seed": cfg["seed"],
        "instruction": cfg["inference"]["caption"]["instruction"],
        "content_order": cfg["inference"]["caption"]["content_order"],  # the caption prompt SFT trains on
        "encoder": cfg["pretrain"]["encoder"],
    }


def _pretrain_decoder(cfg: Mapping[str, Any], phase: str) -> dict[str, Any]:
    decoder = dict(cfg["pretrain"]["decoder"])
    phases = decoder.pop("phases")
    (selected,) = [p for p in phases if p["name"] == phase]
    return {
        "seed": cfg["seed"],
        "model": _decoder_reading(cfg),
        "dtype": _dtype(cfg),
        "image_sampling": cfg["inference"]["image"],
        "decoder": decoder,
        "phase": selected,
    }


def _decoder_reading(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """How the decoder reads captions (role, token budget): every stage that conditions it depends on it."""
    decoder = cfg["models"]["decoder"]
    return {k: decoder[k] for k in decoder if k not in ("path", "tiny")}  # reads only the keys it keeps


def _dtype(cfg: Mapping[str, Any]) -> str:
    """The precision of frozen models on GPUs: every stage that loads one with it depends on it."""
    return cfg["models"]["dtype"]


def _rl_common(cfg: Mapping[str, Any]) -> dict[str, Any]:
    caption = cfg["inference"]["caption"]
    return {
        "seed": cfg["seed"],
        "instruction": caption["instruction"],
        "content_order": caption["content_order"],  # the caption prompt (models/encoder.py CaptionPrompt)
        "decoder_reading": _decoder_reading(cfg),
        "dtype": _dtype(cfg),
        "rewards": cfg["rl"]["rewards"],
    }


def _data_rl_select(cfg: Mapping[str, Any]) -> dict[str, Any]:
    # the caption_words rule scores the largest image resolution's column of the shards
    return {"seed": cfg["seed"], "rl_data": cfg["rl"]["data"], "resolutions": cfg["data"]["resolutions"]}


def _rl_coldstart(cfg: Mapping[str, Any]) -> dict[str, Any]:
    return {**_rl_common(cfg), "coldstart": cfg["rl"]["coldstart"]}


def _rl_encoder(cfg: Mapping[str, Any]) -> dict[str, Any]:
    return {**_rl_common(cfg), "encoder": cfg["rl"]["encoder"], "reader": cfg["rl"]["reader"]}


def _rl_decoder(cfg: Mapping[str, Any], variant: str) -> dict[str, Any]:
    return {**_rl_common(cfg), "decoder": cfg["rl"]["decoder"], "variant": variant}


def _rl_variant(cfg: Mapping[str, Any], variant: str) -> dict[str, Any]:
    coldstart = cfg["rl"]["coldstart"]
    # what its record's "protocol" states
    return {
        "variant": variant,
        "reader": cfg["rl"]["reader"],
        **{k: coldstart[k] for k in ("enabled", "mode")},
        "conditioning": cfg["models"]["decoder"]["conditioning"],
    }


_ITEM_KEYS = {
    "unified_bench": ("folder", "own_split", "resolution"),
    "geneval": ("items_file", "vocabulary", "prompts_per_task", "seed", "images_per_prompt"),
    "geneval_pp": ("items_file", "items_per_tag", "seed"),
    "mmt": ("tsv", "categories", "questions_per_task", "seed", "resolution"),
}
_GENERATION_KEYS = {
    "unified_bench": ("resolution",),
    "geneval": ("resolution",),
    "geneval_pp": ("resolution",),
    "mmt": ("circular",),
}


def _pick(section: Mapping[str, Any], keys) -> dict[str, Any]:
    return {k: section[k] for k in keys}


def _eval_items(cfg: Mapping[str, Any], bench: str) -> dict[str, Any]:
    return {"seed": cfg["seed"], "bench": bench, **_pick(cfg["eval"][bench], _ITEM_KEYS[bench])}


def _eval_generate(cfg: Mapping[str, Any], system: str, bench: str) -> dict[str, Any]:
    view = {
        "shards": cfg["eval"]["shards"],
        "dtype": _dtype(cfg),
        **_pick(cfg["eval"][bench], _GENERATION_KEYS[bench]),
    }
    if system == UNITOKEN_SYSTEM:
        return {**view, "unitoken": _unitoken_prompting(cfg)}
    return {**view, "inference": cfg["inference"], "decoder_reading": _decoder_reading(cfg)}


UNITOKEN_SYSTEM = "unitoken"


def _unitoken_prompting(cfg: Mapping[str, Any]) -> dict[str, Any]:
    pretokenize = cfg["unitoken"]["pretokenize"]
    return {
        "sampling": cfg["unitoken"]["sampling"],
        "instructions": _pick(pretokenize, ("caption_instruction", "generate_instruction")),
    }


def _unitoken_vq(cfg: Mapping[str, Any]) -> dict[str, Any]:
    unitoken = cfg["unitoken"]
    return {"seed": cfg["seed"], "spec": unitoken["models"]["tiny_vq"], "train": unitoken["vq_train"]}


def _unitoken_pretokenize(cfg: Mapping[str, Any]) -> dict[str, Any]:
    return {"pretokenize": cfg["unitoken"]["pretokenize"]}


def _unitoken_train(cfg: Mapping[str, Any], unitoken_stage: str) -> dict[str, Any]:
    (stage,) = [s for s in cfg["unitoken"]["stages"] if s["name"] == unitoken_stage]
    return {"seed": cfg["seed"], "z_loss": cfg["unitoken"]["z_loss"], "stage": stage}


def _unitoken_system(cfg: Mapping[str, Any]) -> dict[str, Any]:
    return {}


def _eval_score(cfg: Mapping[str, Any], system: str, bench: str) -> dict[str, Any]:
    if bench == "unified_bench":
        return {
            "backbones": cfg["eval"]["unified_bench"]["backbones"],
            "dtype": _dtype(cfg),
            "reward_alphas": cfg["rl"]["rewards"]["reconstruction"]["alphas"],  # the RL reward, recomputed
        }
    if bench == "mmt":
        view = _pick(cfg["eval"]["mmt"], ("circular", "judge_path"))
        if view["judge_path"]:  # the answer judge VLM is loaded in models.dtype
            view["dtype"] = _dtype(cfg)
        return view
    if bench == "geneval_pp":  # a VLM judge (or the shapes world's exact one), no detector
        return {"judge_path": cfg["eval"]["geneval_pp"]["judge_path"], "dtype": _dtype(cfg)}
    return {"detector": cfg["eval"]["detector"]}


def _eval_judge(cfg: Mapping[str, Any], first: str, second: str) -> dict[str, Any]:
    view = _pick(cfg["eval"]["judge"], ("judges", "margin"))
    if any(backend != "scene_graph" for backend in view["judges"].values()):  # a VLM, in models.dtype
        view["dtype"] = _dtype(cfg)
    return view


def _eval_system(cfg: Mapping[str, Any], external: str) -> dict[str, Any]:
    spec = cfg["eval"]["systems"][external]  # the rule's wildcard names only configured systems
    if spec.get("kind") == "uae-release":  # conditioned as the release is, whatever models.decoder says
        return {"system": spec}
    return {"system": spec, "conditioning": cfg["models"]["decoder"]["conditioning"]}


def _eval_summary(cfg: Mapping[str, Any]) -> dict[str, Any]:
    return {"variants": cfg["rl"]["variants"]}


def _select_checkpoint(cfg: Mapping[str, Any], rl_stage: str) -> dict[str, Any]:
    return {
        "seed": cfg["seed"],
        "selection": cfg["eval"]["selection"],
        "inference": cfg["inference"],
        "decoder_reading": _decoder_reading(cfg),
        "dtype": _dtype(cfg),
        **_pick(cfg["eval"]["unified_bench"], ("resolution", "backbones")),
    }


def _report_dag(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """What shapes the rule graph: which stages, variants and benchmarks exist."""
    return {
        "sources": [s for s, c in cfg["data"]["sources"].items() if c["enabled"]],
        "vae": cfg["vae"]["enabled"] and cfg["models"]["source"] == "tiny",
        "phases": [p["name"] for p in cfg["pretrain"]["decoder"]["phases"]],
        "coldstart": cfg["rl"]["coldstart"]["enabled"],
        "variants": cfg["rl"]["variants"],
        "benchmarks": [
            b for b in ("unified_bench", "geneval", "geneval_pp", "mmt") if cfg["eval"][b]["enabled"]
        ],
        "selection": cfg["eval"]["selection"]["enabled"],
        "judge": cfg["eval"]["judge"]["enabled"],
        "systems": sorted(cfg["eval"]["systems"]),
    }


def _ingest_run(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """What the report reads from the run's config beyond the stages' outputs: the seed spread its RL
    rows are judged against (measured after the run, so editing it must re-ingest and re-render)."""
    return {"seed_spread": cfg["eval"]["seed_spread"]}


def _named(items, name: str):
    (found,) = [item for item in items if item.name == name]
    return found


def _scoring_footprint(cfg: UmmConfig, wildcards: Mapping[str, str]) -> Footprint:
    """Scoring runs on one GPU, except a benchmark judged by a local VLM (GenEval++'s judge, MMT's answer
    judge: 72B at the paper preset), which loads it over one node's GPUs."""
    judges = {"geneval_pp": cfg.eval.geneval_pp.judge_path, "mmt": cfg.eval.mmt.judge_path}
    return Footprint.NODE if judges.get(wildcards.get("bench", "")) else Footprint.GPU


@dataclass(frozen=True)
class Stage:
    view: View  # (resolved config, **wildcards) -> the config values the stage reads
    run: str | None = None  # "module:function" taking a JobContext; None: no job (a DAG-only rule)
    gather: str | None = None  # "module:function" taking (JobSpec, list of task results)
    array: Callable[[UmmConfig], int] | None = None  # elements of its job array; None: one job
    # the folder under train/ of the model it trains and the warehouse records with its provenance
    # ("{wildcard}" placeholders filled from the job's wildcards); None: no such model
    trains: str | None = None
    # the shape of its job on the cluster launcher.defaults describes, from one process to every GPU; or
    # (config, wildcards) -> that shape, for a stage whose jobs differ
    footprint: Footprint | Callable[[UmmConfig, Mapping[str, str]], Footprint] = Footprint.CLUSTER
    # (config, wildcards) -> the LoopConfig a training stage runs (its steps, batch and engine)
    loop: Callable[[UmmConfig, Mapping[str, str]], Any] | None = None

    def __post_init__(self) -> None:
        if self.run is None and self.footprint is not Footprint.CLUSTER:
            raise ValueError("a DAG-only stage (run=None) runs no job and has no footprint")

    def engine(self, cfg: UmmConfig, wildcards: Mapping[str, str]) -> str | None:
        """How a training stage's job wraps its model ("ddp", "fsdp", "deepspeed-zero2", ...); None for a
        stage that trains nothing."""
        if self.loop is None:
            return None
        loop = self.loop(cfg, wildcards)
        return f"deepspeed-zero{loop.zero_stage}" if loop.distributed == "deepspeed" else loop.distributed

    def footprint_of(self, cfg: UmmConfig, wildcards: Mapping[str, str]) -> Footprint:
        return self.footprint if isinstance(self.footprint, Footprint) else self.footprint(cfg, wildcards)

    @property
    def wildcards(self) -> list[str]:
        return list(inspect.signature(self.view).parameters)[1:]

    def trained(self, **wildcards: str) -> str | None:
        """The ``train/`` folder name of this job's model (None for a stage that trains none)."""
        return None if self.trains is None else self.trains.format(**wildcards)


STAGES: dict[str, Stage] = {
    # footprints: PROCESS one process, no GPU; GPU one GPU; NODE one node's GPUs in one process;
    # NODE_EACH that on every node; CLUSTER every GPU of every node (launcher.defaults)
    "build_tiny_model": Stage(
        _tiny_model, "workflow_scripts.tiny.stage:build_tiny_model", footprint=Footprint.PROCESS
    ),
    "data_collect": Stage(_data_collect, "workflow_scripts.data.stage:collect", footprint=Footprint.PROCESS),
    "data_caption": Stage(
        _data_caption,
        "workflow_scripts.data.stage:caption",
        gather="workflow_scripts.data.stage:gather_captions",
        footprint=Footprint.NODE_EACH,  # a 78B captioner spans a node's GPUs; the images split over nodes
    ),
    "data_build": Stage(_data_build, "workflow_scripts.data.stage:build", footprint=Footprint.PROCESS),
    "vae_train": Stage(
        _vae_train,
        "workflow_scripts.vae.stage:train_vae",
        trains="vae_train",
        footprint=Footprint.GPU,
        loop=lambda cfg, w: cfg.vae.loop,
    ),
    "reward_train": Stage(
        _reward_train,
        "workflow_scripts.reward.stage:train_backbone",
        trains="reward_{backbone}",
        footprint=Footprint.GPU,
        loop=lambda cfg, w: cfg.reward_train.loop,
    ),
    "pretrain_encoder": Stage(
        _pretrain_encoder,
        "workflow_scripts.pretrain.encoder_sft:run",
        trains="pretrain_encoder",
        footprint=Footprint.CLUSTER,
        loop=lambda cfg, w: cfg.pretrain.encoder.loop,
    ),
    "pretrain_decoder": Stage(
        _pretrain_decoder,
        "workflow_scripts.pretrain.decoder_flow:run",
        trains="pretrain_decoder_{phase}",
        footprint=Footprint.CLUSTER,
        loop=lambda cfg, w: _named(cfg.pretrain.decoder.phases, w["phase"]).loop,
    ),
    "data_rl_select": Stage(
        _data_rl_select, "workflow_scripts.data.stage:rl_select", footprint=Footprint.PROCESS
    ),
    "rl_coldstart": Stage(
        _rl_coldstart,
        "workflow_scripts.rl.stage:coldstart",
        trains="rl_coldstart",
        footprint=Footprint.CLUSTER,
        loop=lambda cfg, w: cfg.rl.coldstart.loop,
    ),
    "rl_encoder": Stage(
        _rl_encoder,
        "workflow_scripts.rl.stage:encoder",
        trains="rl_encoder",
        footprint=Footprint.CLUSTER,
        loop=lambda cfg, w: cfg.rl.encoder.loop,
    ),
    "rl_decoder": Stage(
        _rl_decoder,
        "workflow_scripts.rl.stage:decoder",
        trains="rl_decoder_{variant}",
        footprint=Footprint.CLUSTER,
        loop=lambda cfg, w: cfg.rl.decoder.loop,
    ),
    "rl_variant": Stage(_rl_variant, "workflow_scripts.rl.stage:variant", footprint=Footprint.PROCESS),
    "select_checkpoint": Stage(
        _select_checkpoint, "workflow_scripts.eval.stage:select_checkpoint", footprint=Footprint.GPU
    ),
    "eval_items": Stage(_eval_items, "workflow_scripts.eval.stage:eval_items", footprint=Footprint.PROCESS),
    "eval_system": Stage(
        _eval_system, "workflow_scripts.eval.stage:eval_system", footprint=Footprint.PROCESS
    ),
    "eval_generate": Stage(
        _eval_generate,
        "workflow_scripts.eval.stage:eval_generate",
        gather="workflow_scripts.eval.stage:gather_generated",
        array=lambda cfg: cfg.eval.shards,  # one element per shard
        footprint=Footprint.GPU,
    ),
    "eval_score": Stage(_eval_score, "workflow_scripts.eval.stage:eval_score", footprint=_scoring_footprint),
    "eval_judge": Stage(_eval_judge, "workflow_scripts.eval.stage:eval_judge", footprint=Footprint.NODE),
    "eval_summary": Stage(
        _eval_summary, "workflow_scripts.eval.stage:eval_summary", footprint=Footprint.PROCESS
    ),
    "unitoken_vq": Stage(
        _unitoken_vq,
        "workflow_scripts.unitoken.stage:train_vq",
        footprint=Footprint.GPU,
        loop=lambda cfg, w: cfg.unitoken.vq_train.loop,
    ),
    "unitoken_pretokenize": Stage(
        _unitoken_pretokenize,
        "workflow_scripts.unitoken.stage:pretokenize",
        gather="workflow_scripts.unitoken.stage:gather_pretokenized",
        array=lambda cfg: cfg.unitoken.pretokenize.shards,  # one element per token shard
        footprint=Footprint.GPU,
    ),
    "unitoken_train": Stage(
        _unitoken_train,
        "workflow_scripts.unitoken.stage:train_stage",
        footprint=Footprint.CLUSTER,
        loop=lambda cfg, w: _named(cfg.unitoken.stages, w["unitoken_stage"]).loop,
    ),
    "unitoken_system": Stage(
        _unitoken_system, "workflow_scripts.unitoken.stage:unitoken_system", footprint=Footprint.PROCESS
    ),
    "report_dag": Stage(_report_dag),
    "ingest_run": Stage(_ingest_run),
}
JOBS = [name for name, stage in STAGES.items() if stage.run]  # what the launcher runs, in run order


def decoder_stage(phase: str) -> str:
    """The training stage of one decoder pretraining phase (its folder under ``train/``)."""
    return STAGES["pretrain_decoder"].trained(phase=phase)


def reward_stage(backbone: str) -> str:
    """The training stage of one tiny reward backbone (its folder under ``train/``)."""
    return STAGES["reward_train"].trained(backbone=backbone)


def rl_decoder_stage(variant: str) -> str:
    return STAGES["rl_decoder"].trained(variant=variant)


def view_wildcards(stage: str) -> list[str] | None:
    """The wildcard names a stage's view takes (None for a name outside the catalog)."""
    entry = STAGES.get(stage)
    return None if entry is None else entry.wildcards


def stage_view(cfg: Mapping[str, Any], stage: str, **wildcards: str) -> dict[str, Any]:
    try:
        entry = STAGES[stage]
    except KeyError:
        raise KeyError(f"no config view for stage '{stage}'; known: {sorted(STAGES)}") from None
    return entry.view(cfg, **wildcards)


def view_scope(cfg: Mapping[str, Any], stage: str, **wildcards: str) -> Scope:
    """The config paths a stage's view covers: exactly what its view function reads (``config/scope.py``)."""
    stage_view(cfg, stage, **wildcards)  # the same error for an unknown stage
    return trace(STAGES[stage].view, cfg, **wildcards)[1]


def resources(cfg: UmmConfig, stage: str, wildcards: Mapping[str, str] | None = None):
    """What one job of ``stage`` (with these wildcards) asks the scheduler for (``launch.config.Resources``):
    its footprint on the configured cluster, then its ``launcher.stages`` entry."""
    return cfg.launcher.resources(stage, STAGES[stage].footprint_of(cfg, wildcards or {}))


def stage_hash(cfg: Mapping[str, Any], stage: str, **wildcards: str) -> str:
    return digest(stage_view(cfg, stage, **wildcards))

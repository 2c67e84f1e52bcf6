"""Which config values each stage reads.

A stage's *view* is the part of the resolved config its outputs depend on. Its hash is a Snakemake
param, so editing a value re-runs exactly the stages whose view contains it (and, through their
outputs, what depends on them). Entry points check that the view they read still hashes to the value
the DAG recorded.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

from workflow_scripts.config.loader import digest

View = Callable[..., dict[str, Any]]
_VIEWS: dict[str, View] = {}


def _view(name: str) -> Callable[[View], View]:
    def register(fn: View) -> View:
        _VIEWS[name] = fn
        return fn

    return register


@_view("build_tiny_model")
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
    else:
        spec = models["reward"][component]["tiny"]
    view = {"seed": cfg["seed"], "spec": spec}
    if component in ("encoder", "unitoken_lm"):
        # the tiny tokenizer is trained on captions of the configured shapes world
        view["vocabulary"] = {
            k: cfg["data"]["sources"]["synthetic"][k] for k in ("classes", "colors", "textures")
        }
    return view


@_view("data_collect")
def _data_collect(cfg: Mapping[str, Any], source: str) -> dict[str, Any]:
    return {"seed": cfg["seed"], "source": cfg["data"]["sources"][source]}


@_view("data_caption")
def _data_caption(cfg: Mapping[str, Any], source: str) -> dict[str, Any]:
    captioning = cfg["data"]["captioning"]
    view = {"seed": cfg["seed"], "draft": captioning["draft"][source], "refine": captioning["refine"]}
    if view["draft"] == "vlm":
        view["draft_model"] = captioning["draft_model"]
    if view["refine"] == "llm":
        view["refine_model"] = captioning["refine_model"]
    return view


@_view("data_build")
def _data_build(cfg: Mapping[str, Any]) -> dict[str, Any]:
    data = cfg["data"]
    return {"seed": cfg["seed"], **{k: data[k] for k in ("filters", "splits", "resolutions", "shard_size")}}


@_view("pretrain_encoder")
def _pretrain_encoder(cfg: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "seed": cfg["seed"],
        "instruction": cfg["inference"]["caption"]["instruction"],
        "encoder": cfg["pretrain"]["encoder"],
    }


@_view("pretrain_decoder")
def _pretrain_decoder(cfg: Mapping[str, Any], phase: str) -> dict[str, Any]:
    decoder = dict(cfg["pretrain"]["decoder"])
    phases = decoder.pop("phases")
    (selected,) = [p for p in phases if p["name"] == phase]
    return {
        "seed": cfg["seed"],
        "model": _decoder_reading(cfg),
        "image_sampling": cfg["inference"]["image"],
        "decoder": decoder,
        "phase": selected,
    }


def _decoder_reading(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """How the decoder reads captions (role, token budget): every stage that conditions it depends on it."""
    return {k: v for k, v in cfg["models"]["decoder"].items() if k not in ("path", "tiny")}


def _rl_common(cfg: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "seed": cfg["seed"],
        "instruction": cfg["inference"]["caption"]["instruction"],
        "decoder_reading": _decoder_reading(cfg),
        "rewards": cfg["rl"]["rewards"],
    }


@_view("data_rl_select")
def _data_rl_select(cfg: Mapping[str, Any]) -> dict[str, Any]:
    return {"seed": cfg["seed"], "rl_data": cfg["rl"]["data"]}


@_view("rl_coldstart")
def _rl_coldstart(cfg: Mapping[str, Any]) -> dict[str, Any]:
    return {**_rl_common(cfg), "coldstart": cfg["rl"]["coldstart"]}


@_view("rl_encoder")
def _rl_encoder(cfg: Mapping[str, Any]) -> dict[str, Any]:
    return {**_rl_common(cfg), "encoder": cfg["rl"]["encoder"]}


@_view("rl_decoder")
def _rl_decoder(cfg: Mapping[str, Any], variant: str) -> dict[str, Any]:
    return {**_rl_common(cfg), "decoder": cfg["rl"]["decoder"], "variant": variant}


@_view("rl_variant")
def _rl_variant(cfg: Mapping[str, Any], variant: str) -> dict[str, Any]:
    return {"variant": variant}


_ITEM_KEYS = {
    "unified_bench": ("folder", "resolution"),
    "geneval": ("items_file", "vocabulary", "prompts_per_task", "seed", "images_per_prompt"),
    "geneval_pp": ("items_file", "prompts_per_category", "seed", "images_per_prompt"),
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


@_view("eval_items")
def _eval_items(cfg: Mapping[str, Any], bench: str) -> dict[str, Any]:
    view = {"seed": cfg["seed"], "bench": bench, **_pick(cfg["eval"][bench], _ITEM_KEYS[bench])}
    if bench == "geneval_pp":
        view["vocabulary"] = cfg["eval"]["geneval"]["vocabulary"]
    return view


@_view("eval_generate")
def _eval_generate(cfg: Mapping[str, Any], system: str, bench: str) -> dict[str, Any]:
    view = {"shards": cfg["eval"]["shards"], **_pick(cfg["eval"][bench], _GENERATION_KEYS[bench])}
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


@_view("unitoken_vq")
def _unitoken_vq(cfg: Mapping[str, Any]) -> dict[str, Any]:
    unitoken = cfg["unitoken"]
    return {"seed": cfg["seed"], "spec": unitoken["models"]["tiny_vq"], "train": unitoken["vq_train"]}


@_view("unitoken_pretokenize")
def _unitoken_pretokenize(cfg: Mapping[str, Any]) -> dict[str, Any]:
    return {"pretokenize": cfg["unitoken"]["pretokenize"]}


@_view("unitoken_train")
def _unitoken_train(cfg: Mapping[str, Any], unitoken_stage: str) -> dict[str, Any]:
    (stage,) = [s for s in cfg["unitoken"]["stages"] if s["name"] == unitoken_stage]
    return {"seed": cfg["seed"], "z_loss": cfg["unitoken"]["z_loss"], "stage": stage}


@_view("unitoken_system")
def _unitoken_system(cfg: Mapping[str, Any]) -> dict[str, Any]:
    return {}


@_view("eval_score")
def _eval_score(cfg: Mapping[str, Any], system: str, bench: str) -> dict[str, Any]:
    if bench == "unified_bench":
        return {"backbones": cfg["eval"]["unified_bench"]["backbones"]}
    if bench == "mmt":
        return _pick(cfg["eval"]["mmt"], ("circular", "judge_path"))
    return {"detector": cfg["eval"]["detector"]}


@_view("eval_judge")
def _eval_judge(cfg: Mapping[str, Any], first: str, second: str) -> dict[str, Any]:
    return _pick(cfg["eval"]["judge"], ("judges", "margin"))


@_view("eval_system")
def _eval_system(cfg: Mapping[str, Any], system: str) -> dict[str, Any]:
    return {"system": cfg["eval"]["systems"][system]}


@_view("eval_summary")
def _eval_summary(cfg: Mapping[str, Any]) -> dict[str, Any]:
    return {"variants": cfg["rl"]["variants"]}


@_view("select_checkpoint")
def _select_checkpoint(cfg: Mapping[str, Any], rl_stage: str) -> dict[str, Any]:
    return {
        "seed": cfg["seed"],
        "selection": cfg["eval"]["selection"],
        "inference": cfg["inference"],
        "decoder_reading": _decoder_reading(cfg),
        **_pick(cfg["eval"]["unified_bench"], ("resolution", "backbones")),
    }


@_view("report_dag")
def _report_dag(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """What shapes the rule graph: which stages, variants and benchmarks exist."""
    return {
        "sources": [s for s, c in cfg["data"]["sources"].items() if c["enabled"]],
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


def view_wildcards(stage: str) -> list[str] | None:
    """The wildcard names a stage's view takes (None for a stage without a view)."""
    view = _VIEWS.get(stage)
    return None if view is None else list(inspect.signature(view).parameters)[1:]


def stage_view(cfg: Mapping[str, Any], stage: str, **wildcards: str) -> dict[str, Any]:
    try:
        view = _VIEWS[stage]
    except KeyError:
        raise KeyError(f"no config view for stage '{stage}'; known: {sorted(_VIEWS)}") from None
    return view(cfg, **wildcards)


def stage_hash(cfg: Mapping[str, Any], stage: str, **wildcards: str) -> str:
    return digest(stage_view(cfg, stage, **wildcards))

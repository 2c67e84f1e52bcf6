"""Real-shape stand-ins of every paper-preset model: published widths, heads, vocabularies, patch sizes and
special tokens (:mod:`workflow_scripts.tiny.published`), 1-2 layers per stack, fixed-seed random weights,
written in the layout of the downloaded directory so the pipeline's own loaders read them.

    python -m workflow_scripts.tiny.paper_shapes OUT_DIR [--layers 1] [--only NAME ...] [--measure]

writes ``OUT_DIR/<model>/`` for each model and ``OUT_DIR/paper.stand_in.yaml``, a configfile pointing every
model path of paper.example.yaml at them::

    snakemake -n all --configfile paper.example.yaml OUT_DIR/paper.stand_in.yaml

``--smoke`` builds every stand-in that is missing (UniToken's too: the smoke overlay turns it on) and
writes a handful of images and one-line benchmark files with ``OUT_DIR/paper.smoke_data.yaml``; the smoke
run then executes every rule of the paper DAG, both recipes, on CPU through the local launcher (2
optimiser steps per stage, tests/configs/paper_smoke.yaml)::

    snakemake all --configfile paper.example.yaml OUT_DIR/paper.stand_in.yaml \
        OUT_DIR/paper.smoke_data.yaml tests/configs/paper_smoke.yaml

What is cut, and why (also in ``OUT_DIR/stand_in.json``):

* every stack's depth (``--layers``; the DiT keeps at least 2 joint blocks so both block kinds run: the
  last SD3 block is ``context_pre_only``);
* the three ~72B judge / captioning LLMs keep their published vocabulary (152,064 / 151,674 rows),
  head_dim 128, GQA ratio 8 and special tokens, but 8 query heads instead of 64 (hidden 1024 instead of
  8192, MLP scaled alike): at 8192 wide the two embedding matrices alone are 2.5e9 parameters (10 GB in
  fp32, as the CPU loaders load them) - more than a shared 23 GB CI box can hold next to other jobs;
* tokenizers keep the published vocabulary size and every special/added token at its published id; the
  BPE merges are learned from a small caption corpus and the rest of the base vocabulary is filled with
  unreachable placeholder entries (the released merges are data we do not ship); the pre-tokenizer is
  plain byte-level (Qwen's splits with a regex first), so token counts of text differ from the release;
* SD3.5's T5-XXL (text_encoder_3/tokenizer_3) is omitted: the decoder loader passes
  ``text_encoder_3=None`` and never reads it.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from workflow_scripts import atomic
from workflow_scripts.tiny import published as P

log = logging.getLogger(__name__)

SEED = 0
JUDGE_HEADS = 8  # query heads kept by the ~72B stand-ins (head_dim and GQA ratio as published)
STAND_IN_FILE = "stand_in.json"
CONFIG_FILE = "paper.stand_in.yaml"

# the published Qwen2.5-VL chat template's behaviour, written here: a default system turn when the
# conversation has none, images/videos as vision-start + pad + vision-end, ChatML turns
QWEN_VL_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant."
    "<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}"
    "{% endfor %}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# Qwen2.5-Instruct's (text only; the published template also renders tool calls, which nothing here uses)
QWEN_LLM_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are Qwen, created by "
    "Alibaba Cloud. You are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# InternVL3's (ChatML; an image is <img> + 256 x <IMG_CONTEXT> + </img> per tile, expanded by the processor)
INTERNVL_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\n你是书生·万象，英文名是InternVL，"
    "是由上海人工智能实验室、清华大学及多家合作单位联合开发的多模态大语言模型。<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' %}<IMG_CONTEXT>\n"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}{% endfor %}{% endif %}"
    "<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


# ---------------------------------------------------------------------------------------------- helpers
def _corpus() -> list[str]:
    from workflow_scripts.data import scenes
    from workflow_scripts.tiny.uae import caption_corpus

    return caption_corpus(SEED, scenes.SHAPES, tuple(scenes.COLORS), ("solid", "striped"), scenes_count=300)


def _bpe_core(corpus: list[str], base_vocab: int, merges_vocab: int = 2048, *, suffix: str = ""):
    """A byte-level BPE ``tokenizers.Tokenizer`` with exactly ``base_vocab`` regular entries: merges learned
    from ``corpus``, then unreachable placeholders (no merge produces them) up to the published size."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    from workflow_scripts.tiny.uae import train_bpe

    learned = json.loads(train_bpe(corpus, merges_vocab, []).to_str())["model"]
    vocab = dict(learned["vocab"])
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in learned["merges"]]
    filler = 0
    while len(vocab) < base_vocab:
        vocab[f"<|placeholder_{filler}|>{suffix}"] = len(vocab)
        filler += 1
    core = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token=None))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    return core


def qwen_tokenizer(corpus: list[str], chat_template: str, extra: tuple[str, ...] = (), **named):
    """Qwen2.5's tokenizer shape: 151,643 BPE entries, then its 22 added tokens at their published ids
    (and ``extra`` after them, e.g. InternVL's image tokens)."""
    from tokenizers import AddedToken
    from transformers import Qwen2TokenizerFast

    core = _bpe_core(corpus, P.QWEN_BASE_VOCAB)
    core.add_tokens(
        [AddedToken(t, special=t not in P.QWEN_NON_SPECIAL, normalized=False) for t in P.QWEN_ADDED_TOKENS]
        + [AddedToken(t, special=True, normalized=False) for t in extra]
    )
    return Qwen2TokenizerFast(
        tokenizer_object=core,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        bos_token=None,
        chat_template=chat_template,
        model_max_length=P.QWEN_MODEL_MAX_LENGTH,
        errors="replace",
        **named,
    )


def cut_width(text: dict, heads: int = JUDGE_HEADS) -> dict:
    """``text`` with ``heads`` query heads: head_dim and the query/key-value ratio kept, hidden and MLP
    widths scaled by the same factor, vocabulary untouched."""
    head_dim = text["hidden_size"] // text["num_attention_heads"]
    ratio = text["num_attention_heads"] // text["num_key_value_heads"]
    scale = text["num_attention_heads"] // heads
    return {
        **text,
        "hidden_size": heads * head_dim,
        "num_attention_heads": heads,
        "num_key_value_heads": max(1, heads // ratio),
        "intermediate_size": text["intermediate_size"] // scale,
    }


def _text_config(text: dict, layers: int) -> dict:
    rope = {"rope_type": "default", "rope_theta": text["rope_theta"]}
    if "mrope_section" in text:
        rope["mrope_section"] = list(text["mrope_section"])
    keys = ("vocab_size", "hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads",
            "max_position_embeddings", "rms_norm_eps", "sliding_window", "max_window_layers")  # fmt: skip
    out = {k: text[k] for k in keys if k in text}
    out.update(num_hidden_layers=min(layers, text["num_hidden_layers"]), rope_parameters=rope)
    out["use_sliding_window"] = False
    return out


def _save_bf16(model: torch.nn.Module, out_dir: Path) -> None:
    """Saved in bf16, as the LLM/VLM/DiT repositories publish their weights."""
    model.to(torch.bfloat16).save_pretrained(out_dir)


# -------------------------------------------------------------------------------------------- builders
def build_qwen_vl(spec: dict, out_dir: Path, *, layers: int, heads: int | None = None) -> dict:
    """A Qwen2.5-VL directory: model (LLM + vision tower + merger), processor, tokenizer, chat template."""
    from transformers import (
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2_5_VLProcessor,
        Qwen2VLImageProcessor,
        Qwen2VLVideoProcessor,
    )

    text = cut_width(spec["text"], heads) if heads else dict(spec["text"])
    vision = spec["vision"]
    depth = min(layers, vision["depth"])
    tokenizer = qwen_tokenizer(_corpus(), QWEN_VL_TEMPLATE)
    proc = spec["processor"]
    image_processor = Qwen2VLImageProcessor(
        min_pixels=proc["min_pixels"],
        max_pixels=proc["max_pixels"],
        patch_size=proc["patch_size"],
        merge_size=proc["merge_size"],
        temporal_patch_size=proc["temporal_patch_size"],
        image_mean=proc["image_mean"],
        image_std=proc["image_std"],
    )
    video_processor = Qwen2VLVideoProcessor(
        patch_size=proc["patch_size"], merge_size=proc["merge_size"], temporal_patch_size=2
    )
    processor = Qwen2_5_VLProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=video_processor,
        chat_template=QWEN_VL_TEMPLATE,
    )
    ids = spec["ids"]
    config = Qwen2_5_VLConfig(
        text_config={
            **_text_config(text, layers),
            "bos_token_id": ids["bos_token_id"],
            "eos_token_id": ids["eos_token_id"],
            "pad_token_id": ids["pad_token_id"],
        },
        vision_config={
            "depth": depth,
            "hidden_size": vision["hidden_size"],
            "intermediate_size": vision["intermediate_size"],
            "num_heads": vision["num_heads"],
            "out_hidden_size": text["hidden_size"],
            "patch_size": vision["patch_size"],
            "spatial_merge_size": vision["spatial_merge_size"],
            "temporal_patch_size": vision["temporal_patch_size"],
            "window_size": vision["window_size"],
            "tokens_per_second": vision["tokens_per_second"],
            # published: every 8th block attends fully, the last one included; at cut depth the last block
            # keeps full attention and any earlier ones keep windowed attention
            "fullatt_block_indexes": [depth - 1],
        },
        image_token_id=ids["image_token_id"],
        video_token_id=ids["video_token_id"],
        vision_start_token_id=ids["vision_start_token_id"],
        vision_end_token_id=ids["vision_end_token_id"],
        tie_word_embeddings=text["tie_word_embeddings"],
    )
    torch.manual_seed(SEED)
    model = Qwen2_5_VLForConditionalGeneration(config)
    model.generation_config.bos_token_id = ids["bos_token_id"]
    model.generation_config.eos_token_id = [ids["eos_token_id"], ids["bos_token_id"]]
    model.generation_config.pad_token_id = ids["pad_token_id"]
    _save_bf16(model, out_dir)
    processor.save_pretrained(out_dir)
    return {"parameters": model.num_parameters(), "width_cut": bool(heads)}


def build_qwen_llm(spec: dict, out_dir: Path, *, layers: int, heads: int | None = None) -> dict:
    """A Qwen2.5-Instruct directory (Qwen2ForCausalLM + tokenizer + chat template)."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    text = cut_width(spec["text"], heads) if heads else dict(spec["text"])
    ids = spec["ids"]
    tokenizer = qwen_tokenizer(_corpus(), QWEN_LLM_TEMPLATE)
    config = Qwen2Config(**_text_config(text, layers), tie_word_embeddings=text["tie_word_embeddings"], **ids)
    torch.manual_seed(SEED)
    model = Qwen2ForCausalLM(config)
    model.generation_config.eos_token_id = [ids["eos_token_id"], ids["bos_token_id"]]
    model.generation_config.pad_token_id = ids["pad_token_id"]
    _save_bf16(model, out_dir)
    tokenizer.save_pretrained(out_dir)
    return {"parameters": model.num_parameters(), "width_cut": bool(heads)}


def build_internvl(spec: dict, out_dir: Path, *, layers: int, heads: int | None = None) -> dict:
    """InternVL3 in transformers' layout (InternVLForConditionalGeneration + InternVLProcessor)."""
    from transformers import (
        GotOcr2ImageProcessor,
        InternVLConfig,
        InternVLForConditionalGeneration,
        InternVLProcessor,
        InternVLVideoProcessor,
    )

    text = cut_width(spec["text"], heads) if heads else dict(spec["text"])
    vision = spec["vision"]
    tokenizer = qwen_tokenizer(
        _corpus(),
        INTERNVL_TEMPLATE,
        extra=(*spec["added_tokens"], "<video>"),
        extra_special_tokens={
            "start_image_token": "<img>",
            "end_image_token": "</img>",
            "context_image_token": "<IMG_CONTEXT>",
            "video_token": "<video>",
        },
    )
    image_token_id = tokenizer.convert_tokens_to_ids("<IMG_CONTEXT>")
    assert image_token_id == spec["image_token_id"], image_token_id
    proc = spec["processor"]
    image_processor = GotOcr2ImageProcessor(
        size={"height": proc["size"], "width": proc["size"]},
        crop_to_patches=proc["crop_to_patches"],
        min_patches=proc["min_patches"],
        max_patches=proc["max_patches"],
        image_mean=list(P.MASK2FORMER_SWIN_S_COCO["processor"]["image_mean"]),  # ImageNet mean/std
        image_std=list(P.MASK2FORMER_SWIN_S_COCO["processor"]["image_std"]),
    )
    processor = InternVLProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=InternVLVideoProcessor(),
        image_seq_length=spec["image_seq_length"],
        chat_template=INTERNVL_TEMPLATE,
    )
    text_config = {**_text_config(text, layers), "model_type": "qwen2"}
    # the tokenizer ends at <video>, one past the published 151,674 rows: keep every token embeddable
    text_config["vocab_size"] = max(text["vocab_size"], len(tokenizer))
    config = InternVLConfig(
        vision_config={
            "hidden_size": vision["hidden_size"],
            "intermediate_size": vision["intermediate_size"],
            "num_hidden_layers": min(layers, vision["num_hidden_layers"]),
            "num_attention_heads": vision["num_attention_heads"],
            "image_size": [vision["image_size"]] * 2,
            "patch_size": [vision["patch_size"]] * 2,
            "use_qk_norm": vision["use_qk_norm"],
            "norm_type": vision["norm_type"],
            "layer_scale_init_value": vision["layer_scale_init_value"],
            "hidden_act": vision["hidden_act"],
        },
        text_config=text_config,
        image_token_id=image_token_id,
        image_seq_length=spec["image_seq_length"],
        downsample_ratio=spec["downsample_ratio"],
        projector_hidden_act=spec["projector_hidden_act"],
        vision_feature_layer=spec["vision_feature_layer"],
        tie_word_embeddings=text["tie_word_embeddings"],
    )
    torch.manual_seed(SEED)
    model = InternVLForConditionalGeneration(config)
    model.generation_config.eos_token_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    _save_bf16(model, out_dir)
    processor.save_pretrained(out_dir)
    return {"parameters": model.num_parameters(), "width_cut": bool(heads)}


def clip_tokenizer(pad_token: str):
    """CLIP's tokenizer shape: 49,406 BPE entries (256 bytes, their end-of-word forms, merges, placeholders),
    then <|startoftext|> 49406 and <|endoftext|> 49407."""
    from tokenizers import pre_tokenizers
    from transformers import CLIPTokenizer

    vocab: dict[str, int] = {}
    for char in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab.setdefault(char, len(vocab))
    for char in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab.setdefault(char + "</w>", len(vocab))
    base = P.SD35_LARGE["clip_tokenizer"]["base_vocab"]
    filler = 0
    while len(vocab) < base:
        vocab[f"<|placeholder_{filler}|></w>"] = len(vocab)
        filler += 1
    vocab["<|startoftext|>"] = base
    vocab["<|endoftext|>"] = base + 1
    return CLIPTokenizer(
        vocab=vocab,
        merges=[],
        model_max_length=P.SD35_LARGE["clip_tokenizer"]["model_max_length"],
        pad_token=pad_token,
    )


def dit_layers(layers: int) -> int:
    """At least two joint blocks: SD3's last block is ``context_pre_only``, the others update the text
    stream; one block would test only the last kind."""
    return max(2, layers)


def build_sd35(spec: dict, out_dir: Path, *, layers: int) -> dict:
    from diffusers import (
        AutoencoderKL,
        FlowMatchEulerDiscreteScheduler,
        SD3Transformer2DModel,
        StableDiffusion3Pipeline,
    )
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    torch.manual_seed(SEED)
    transformer = SD3Transformer2DModel(**{**spec["transformer"], "num_layers": dit_layers(layers)})
    vae_cfg = dict(spec["vae"])
    blocks = len(vae_cfg["block_out_channels"])
    vae = AutoencoderKL(
        **{k: v for k, v in vae_cfg.items() if k != "layers_per_block"},
        layers_per_block=min(layers, vae_cfg["layers_per_block"]),
        down_block_types=["DownEncoderBlock2D"] * blocks,
        up_block_types=["UpDecoderBlock2D"] * blocks,
    )
    scheduler = FlowMatchEulerDiscreteScheduler(**spec["scheduler"])
    encoders = []
    for key in ("text_encoder", "text_encoder_2"):
        cfg = dict(spec[key])
        cfg["num_hidden_layers"] = min(layers, cfg["num_hidden_layers"])
        encoders.append(CLIPTextModelWithProjection(CLIPTextConfig(**cfg)))
    pipe = StableDiffusion3Pipeline(
        transformer=transformer.to(torch.bfloat16),
        vae=vae,
        scheduler=scheduler,
        text_encoder=encoders[0],
        tokenizer=clip_tokenizer("<|endoftext|>"),
        text_encoder_2=encoders[1],
        tokenizer_2=clip_tokenizer(spec["clip_tokenizer"]["pad_2"]),
        text_encoder_3=None,
        tokenizer_3=None,
    )
    pipe.save_pretrained(out_dir)
    return {
        "parameters": transformer.num_parameters(),
        "vae_parameters": sum(p.numel() for p in vae.parameters()),
    }


def build_open_clip(spec: dict, out_dir: Path, *, layers: int) -> dict:
    import open_clip
    from safetensors.torch import save_file

    from workflow_scripts.reward.backbones import OPEN_CLIP_CONFIG

    cfg = json.loads(json.dumps(spec["model_cfg"]))
    cfg["vision_cfg"]["layers"] = min(layers, cfg["vision_cfg"]["layers"])
    cfg["text_cfg"]["layers"] = min(layers, cfg["text_cfg"]["layers"])
    torch.manual_seed(SEED)
    model = open_clip.CLIP(**cfg)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file(model.state_dict(), out_dir / "open_clip_model.safetensors")
    (out_dir / OPEN_CLIP_CONFIG).write_text(
        json.dumps({"model_cfg": cfg, "preprocess_cfg": spec["preprocess_cfg"]}, indent=2)
    )
    return {"parameters": sum(p.numel() for p in model.parameters())}


def build_timm(spec: dict, out_dir: Path, *, layers: int) -> dict:
    import timm
    from timm.models import save_for_hf

    args = {"depth": min(layers, spec["depth"])}
    torch.manual_seed(SEED)
    model = timm.create_model(spec["architecture"], pretrained=False, num_classes=0, **args)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_for_hf(model, str(out_dir), model_args=args, safe_serialization=True)
    return {"parameters": sum(p.numel() for p in model.parameters())}


def build_mask2former(spec: dict, out_dir: Path, *, layers: int) -> dict:
    from transformers import (
        Mask2FormerConfig,
        Mask2FormerForUniversalSegmentation,
        Mask2FormerImageProcessor,
        SwinConfig,
    )

    bb = dict(spec["backbone"])
    backbone = SwinConfig(
        embed_dim=bb["embed_dim"],
        depths=[min(layers, d) for d in bb["depths"]],
        num_heads=bb["num_heads"],
        window_size=bb["window_size"],
        image_size=bb["image_size"],
        patch_size=bb["patch_size"],
        mlp_ratio=bb["mlp_ratio"],
        drop_path_rate=bb["drop_path_rate"],
        out_features=bb["out_features"],
    )
    config = Mask2FormerConfig(
        backbone_config=backbone,
        hidden_dim=spec["hidden_dim"],
        feature_size=spec["feature_size"],
        mask_feature_size=spec["mask_feature_size"],
        num_queries=spec["num_queries"],
        encoder_layers=min(layers, spec["encoder_layers"]),
        # the first decoder "layer" is the prediction from the learnable queries alone: keep one real one
        decoder_layers=min(layers + 1, spec["decoder_layers"]),
        encoder_feedforward_dim=spec["encoder_feedforward_dim"],
        dim_feedforward=spec["dim_feedforward"],
        num_attention_heads=spec["num_attention_heads"],
        num_labels=spec["num_labels"],
        id2label=dict(enumerate(P.COCO_THINGS)),
        label2id={name: i for i, name in enumerate(P.COCO_THINGS)},
    )
    torch.manual_seed(SEED)
    model = Mask2FormerForUniversalSegmentation(config)
    model.save_pretrained(out_dir)
    proc = spec["processor"]
    Mask2FormerImageProcessor(
        size=proc["size"],
        size_divisor=proc["size_divisor"],
        image_mean=proc["image_mean"],
        image_std=proc["image_std"],
        ignore_index=proc["ignore_index"],
        num_labels=spec["num_labels"],
    ).save_pretrained(out_dir)
    return {"parameters": model.num_parameters()}


def chameleon_vocabulary(corpus: list[str]):
    """Chameleon's vocabulary shape: 65,536 entries, image codes at 4..8195 under their released names,
    the named special tokens of :mod:`workflow_scripts.unitoken.sequence` and the grid-size reserved
    tokens, text BPE plus placeholders for the rest."""
    from tokenizers import AddedToken
    from transformers import PreTrainedTokenizerFast

    from workflow_scripts.unitoken.sequence import GRID_TOKENS, TOKEN_NAMES, code_token_name, grid_token_name

    spec = P.CHAMELEON_7B
    codebook = spec["vq"]["num_embeddings"]
    lead = [TOKEN_NAMES[k] for k in ("bos", "pad", "eos")]
    lead.append("<unk>")
    specials = lead + [code_token_name(c) for c in range(codebook)]
    specials += [t for t in TOKEN_NAMES.values() if t not in specials]
    specials += [grid_token_name(n) for n in GRID_TOKENS]
    assert len(lead) == spec["first_code_id"]
    core = _bpe_core(corpus, spec["vocab_size"] - len(specials), suffix="c")
    core.add_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    # specials go first in id order: renumber by building the fast tokenizer from a vocabulary in that order
    model = json.loads(core.to_str())
    regular = model["model"]["vocab"]
    ordered = {t: i for i, t in enumerate(specials)}
    for token in sorted(regular, key=regular.get):
        ordered[token] = len(ordered)
    model["model"]["vocab"] = ordered
    for added in model["added_tokens"]:
        added["id"] = ordered[added["content"]]
    from tokenizers import Tokenizer

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(json.dumps(model)),
        bos_token=TOKEN_NAMES["bos"],
        eos_token=TOKEN_NAMES["eos"],
        pad_token=TOKEN_NAMES["pad"],
        unk_token="<unk>",
    )
    return tokenizer


def build_chameleon(spec: dict, out_dir: Path, *, layers: int) -> dict:
    from transformers import ChameleonConfig, ChameleonForConditionalGeneration, ChameleonVQVAEConfig

    tokenizer = chameleon_vocabulary(_corpus())
    vocabulary = tokenizer.get_vocab()
    vq = dict(spec["vq"])
    vq["num_res_blocks"] = min(layers, vq["num_res_blocks"])
    config = ChameleonConfig(
        vocab_size=spec["vocab_size"],
        hidden_size=spec["hidden_size"],
        intermediate_size=spec["intermediate_size"],
        num_hidden_layers=min(layers, spec["num_hidden_layers"]),
        num_attention_heads=spec["num_attention_heads"],
        num_key_value_heads=spec["num_key_value_heads"],
        max_position_embeddings=spec["max_position_embeddings"],
        rms_norm_eps=spec["rms_norm_eps"],
        rope_parameters={"rope_type": "default", "rope_theta": spec["rope_theta"]},
        qk_layernorm=spec["qk_layernorm"],
        swin_norm=spec["swin_norm"],
        tie_word_embeddings=spec["tie_word_embeddings"],
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        vq_config=ChameleonVQVAEConfig(**vq).to_dict(),
        vocabulary_map=vocabulary,
    )
    torch.manual_seed(SEED)
    model = ChameleonForConditionalGeneration(config)
    _save_bf16(model, out_dir)
    tokenizer.save_pretrained(out_dir)
    return {"parameters": model.num_parameters()}


def build_vq(spec: dict, out_dir: Path, *, layers: int) -> dict:
    """The VQ tokenizer directory ``workflow_scripts.unitoken.vq`` converts the release into."""
    from transformers import ChameleonVQVAEConfig

    from workflow_scripts.unitoken.vq import VQTokenizer

    vq = dict(spec["vq"])
    vq["num_res_blocks"] = min(layers, vq["num_res_blocks"])
    torch.manual_seed(SEED)
    tokenizer = VQTokenizer(ChameleonVQVAEConfig(**vq))
    tokenizer.save_pretrained(out_dir)
    return {"parameters": sum(p.numel() for p in tokenizer.parameters())}


def build_siglip(spec: dict, out_dir: Path, *, layers: int) -> dict:
    from transformers import SiglipVisionConfig, SiglipVisionModel

    keys = ("hidden_size", "intermediate_size", "num_attention_heads", "image_size", "patch_size")
    config = SiglipVisionConfig(
        **{k: spec[k] for k in keys}, num_hidden_layers=min(layers, spec["num_hidden_layers"])
    )
    torch.manual_seed(SEED)
    model = SiglipVisionModel(config)
    model.save_pretrained(out_dir)
    return {"parameters": model.num_parameters()}


# name -> (builder, published spec, keyword arguments, the config keys of paper.example.yaml it serves)
MODELS: dict[str, tuple[Callable, dict, dict, tuple[str, ...]]] = {
    "Qwen2.5-VL-3B-Instruct": (build_qwen_vl, P.QWEN25_VL_3B, {}, ("models.encoder.path",)),
    "stable-diffusion-3.5-large": (build_sd35, P.SD35_LARGE, {}, ("models.decoder.path",)),
    "clip-vit-large-patch14": (build_open_clip, P.CLIP_L14, {}, ("models.reward.clip.path",)),
    "longclip-l": (build_open_clip, P.LONGCLIP_L, {}, ("models.reward.longclip.path",)),
    "dinov2-vit-large": (build_timm, P.DINOV2_L, {}, ("models.reward.dinov2.path",)),
    "dinov3-vit-large": (build_timm, P.DINOV3_L, {}, ("models.reward.dinov3.path",)),
    "mask2former-swin-small-coco-instance": (
        build_mask2former,
        P.MASK2FORMER_SWIN_S_COCO,
        {},
        ("eval.detector.path",),
    ),
    "Qwen2.5-VL-72B-Instruct": (
        build_qwen_vl,
        P.QWEN25_VL_72B,
        {"heads": JUDGE_HEADS},
        ("eval.geneval_pp.judge_path", "eval.judge.judges.qwen2.5-vl-72b", "eval.mmt.judge_path"),
    ),
    "InternVL3-78B": (
        build_internvl,
        P.INTERNVL3_78B,
        {"heads": JUDGE_HEADS},
        ("data.captioning.draft_model.path",),
    ),
    "Qwen2.5-72B-Instruct": (
        build_qwen_llm,
        P.QWEN25_72B,
        {"heads": JUDGE_HEADS},
        ("data.captioning.refine_model.path",),
    ),
    "Lumina-mGPT-7B-512": (build_chameleon, P.CHAMELEON_7B, {}, ("unitoken.models.lm",)),
    "chameleon-vq": (build_vq, P.CHAMELEON_7B, {}, ("unitoken.models.vq",)),
    "siglip-so400m-patch14-384": (build_siglip, P.SIGLIP_SO400M, {}, ("unitoken.models.vision",)),
}


def _disk_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def build(name: str, out_root: Path, *, layers: int = 1, judge_heads: int | None = None) -> dict:
    """Write one stand-in directory (atomically) and return what was built and what it cost.

    ``judge_heads`` overrides the query heads of the ~72B stand-ins (64: their published width, for a
    machine with the memory for it)."""
    builder, spec, kwargs, _ = MODELS[name]
    if judge_heads and "heads" in kwargs:
        kwargs = {**kwargs, "heads": judge_heads}
    started = time.perf_counter()
    with atomic.directory(out_root / name) as tmp:
        info = builder(spec, tmp, layers=layers, **kwargs)
        (tmp / "stand_in_source.json").write_text(
            json.dumps({"published": spec["source"], "layers": layers, **kwargs}, indent=2)
        )
    return {
        **info,
        "source": spec["source"],
        "build_seconds": round(time.perf_counter() - started, 2),
        "disk_bytes": _disk_bytes(out_root / name),
    }


def config_overrides(out_root: Path) -> dict:
    """The paper.example.yaml model paths, each pointing at its stand-in under ``out_root``."""
    root: dict = {}
    for name, (_, _, _, keys) in MODELS.items():
        for key in keys:
            head, _, leaf = key.partition(".judges.")
            parts = [*head.split("."), "judges", leaf] if leaf else key.split(".")
            node = root
            for part in parts[:-1]:
                node = node.setdefault(part, {})
            node[parts[-1]] = str((out_root / name).resolve())
    return root


def write_config(out_root: Path) -> Path:
    import yaml

    text = (
        "# Real-shape stand-ins of the paper-preset models (python -m workflow_scripts.tiny.paper_shapes):\n"
        "# published widths, vocabularies and special tokens, cut depth, random weights. Smoke/tests only.\n"
        + yaml.safe_dump(config_overrides(out_root), sort_keys=False)
    )
    path = out_root / CONFIG_FILE
    atomic.write_text(path, text)
    return path


# -------------------------------------------------------------------------------------- smoke run data
SMOKE_DATA_FILE = "paper.smoke_data.yaml"
SMOKE_OVERLAY = Path(__file__).resolve().parents[2] / "tests" / "configs" / "paper_smoke.yaml"
SMOKE_IMAGES = 1  # drafted by the VLM (the overlay adds 5 shapes scenes: 1 val, 1 bench, 4 train)
# one official line of each generation benchmark: GenEval's evaluation_metadata.jsonl and Echo-4o's
# Geneval++.jsonl (its first line)
GENEVAL_LINE = (
    '{"tag": "colors", "include": [{"class": "bus", "count": 1, "color": "red"}], '
    '"prompt": "a photo of a red bus"}'
)
GENEVAL_PP_LINE = (
    '{"tag": "color_attr", "include": [{"class": "bus", "count": 1, "color": "brown"}, {"class": "truck", '
    '"count": 1, "color": "green"}, {"class": "skateboard", "count": 1, "color": "red"}], "prompt": "A photo '
    'of a brown bus, a green truck, and a red skateboard"}'
)


def write_smoke_data(out_root: Path, images: int = SMOKE_IMAGES) -> Path:
    """The data a smoke run of the paper preset reads, under ``out_root/smoke_data``: an image folder
    (1024-px shapes scenes, no caption sidecars, so the draft VLM and the refining LLM caption them), a
    2-image Unified-Bench folder, one-line GenEval and GenEval++ item files; and ``paper.smoke_data.yaml``
    pointing the paper preset's data keys at them (layer it after paper.example.yaml)."""
    import numpy as np

    from workflow_scripts.data import scenes

    root = out_root / "smoke_data"
    rng = np.random.default_rng(SEED)
    folders = {"longcap": images, "unibench": 2}
    for name, count in folders.items():
        with atomic.directory(root / name) as tmp:
            for i in range(count):
                scene = scenes.sample_scene(rng, min_objects=2, max_objects=5)
                scenes.render(scene, 1024).save(tmp / f"{i:04d}.png")
    atomic.write_text(root / "geneval.jsonl", GENEVAL_LINE + "\n")
    atomic.write_text(root / "geneval_pp.jsonl", GENEVAL_PP_LINE + "\n")
    overrides = {
        "data": {"sources": {"folder": {"path": str((root / "longcap").resolve())}}},
        "eval": {
            "unified_bench": {"folder": str((root / "unibench").resolve())},
            "geneval": {"items_file": str((root / "geneval.jsonl").resolve())},
            "geneval_pp": {"items_file": str((root / "geneval_pp.jsonl").resolve())},
        },
    }
    import yaml

    path = out_root / SMOKE_DATA_FILE
    atomic.write_text(
        path,
        "# Smoke-run data for the paper preset (python -m workflow_scripts.tiny.paper_shapes OUT --smoke)\n"
        + yaml.safe_dump(overrides, sort_keys=False),
    )
    return path


def smoke_command(out_root: Path) -> list[str]:
    """The snakemake arguments of the smoke run, from the repository root."""
    return [
        "all",
        "--configfile",
        "paper.example.yaml",
        str(out_root / CONFIG_FILE),
        str(out_root / SMOKE_DATA_FILE),
        str(SMOKE_OVERLAY.relative_to(SMOKE_OVERLAY.parents[2])),
    ]


# ---------------------------------------------------------------------------------------- measuring
def load_with_pipeline_loader(name: str, folder: Path):
    """Load ``folder`` with the loader the pipeline uses for model ``name``."""
    if name in ("Qwen2.5-VL-3B-Instruct", "Qwen2.5-VL-72B-Instruct"):
        from workflow_scripts.models.encoder import load_encoder

        return load_encoder(folder)
    if name == "stable-diffusion-3.5-large":
        from workflow_scripts.models.decoder import load_decoder

        return load_decoder(
            folder,
            llm_hidden_size=P.QWEN25_VL_3B["text"]["hidden_size"],
            projector_hidden_size=8192,
        )
    if name in ("clip-vit-large-patch14", "longclip-l", "dinov2-vit-large", "dinov3-vit-large"):
        from workflow_scripts.reward.backbones import load_backbone

        backbone = {"clip-vit-large-patch14": "clip", "longclip-l": "longclip"}.get(name, name.split("-")[0])
        return load_backbone(backbone, folder)
    if name == "mask2former-swin-small-coco-instance":
        from workflow_scripts.eval.config import DetectorConfig
        from workflow_scripts.eval.detectors import load_detector
        from workflow_scripts.eval.geneval import COCO_CLASSES

        cfg = DetectorConfig(
            kind="mask2former",
            path=str(folder),
            color="palette",
            threshold=0.3,
            counting_threshold=0.9,
            max_objects=16,
            max_overlap=1.0,
        )
        return load_detector(cfg, COCO_CLASSES, torch.device("cpu"))
    if name == "InternVL3-78B":
        from workflow_scripts.data.captioners import VLMDrafter

        return VLMDrafter(_caption_config(folder), seed=0)
    if name == "Qwen2.5-72B-Instruct":
        from workflow_scripts.data.captioners import LLMRefiner

        return LLMRefiner(_caption_config(folder), seed=0)
    if name == "Lumina-mGPT-7B-512":
        from transformers import ChameleonForConditionalGeneration

        return ChameleonForConditionalGeneration.from_pretrained(folder, dtype=torch.float32)
    if name == "chameleon-vq":
        from workflow_scripts.unitoken.vq import VQTokenizer

        return VQTokenizer.from_pretrained(folder)
    if name == "siglip-so400m-patch14-384":
        from transformers import SiglipVisionModel

        return SiglipVisionModel.from_pretrained(folder, dtype=torch.float32)
    raise KeyError(name)


def _caption_config(folder: Path):
    from workflow_scripts.data.config import CaptionModelConfig

    return CaptionModelConfig(
        path=str(folder), prompt="Describe the image.", max_new_tokens=8, temperature=0.0, batch_size=1
    )


def peak_rss_mb() -> float:
    """This process's peak resident set (VmHWM: per address space, so fresh after exec, unlike
    ``ru_maxrss``, which a child inherits from its parent on Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure_load(name: str, folder: Path) -> dict:
    """Peak RSS of loading ``folder`` with the pipeline's loader, in a fresh process (fp32, CPU), and the
    process's RSS before the load (interpreter + libraries)."""
    code = (
        "import json, sys, time; from pathlib import Path; "
        "from workflow_scripts.tiny import paper_shapes as s; "
        "base = s.peak_rss_mb(); t = time.perf_counter(); "
        f"s.load_with_pipeline_loader({name!r}, Path({str(folder)!r})); "
        "print(json.dumps({'load_seconds': round(time.perf_counter() - t, 2), "
        "'load_peak_rss_mb': round(s.peak_rss_mb()), 'rss_before_load_mb': round(base)}))"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=False)
    if out.returncode:
        return {"load_error": out.stderr.strip().splitlines()[-1] if out.stderr.strip() else "failed"}
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--layers", type=int, default=1, help="layers per stack (default 1)")
    parser.add_argument("--only", nargs="*", choices=sorted(MODELS), help="build only these models")
    parser.add_argument("--measure", action="store_true", help="load each with our loader; record RSS")
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="build the stand-ins that are missing, write the smoke-run data and its configfile; then run "
        "the printed snakemake command",
    )
    parser.add_argument(
        "--judge-heads",
        type=int,
        default=JUDGE_HEADS,
        help=f"query heads of the ~72B stand-ins (default {JUDGE_HEADS}; 64 = published width)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args.out_dir.mkdir(parents=True, exist_ok=True)
    report_path = args.out_dir / STAND_IN_FILE
    report = json.loads(report_path.read_text()) if report_path.exists() else {}
    names = args.only or MODELS
    for name in names:
        if args.smoke and (args.out_dir / name).exists():
            continue  # built before (atomically): a smoke rerun reuses it
        record = build(name, args.out_dir, layers=args.layers, judge_heads=args.judge_heads)
        record["build_peak_rss_mb"] = round(peak_rss_mb())  # cumulative over this process
        if args.measure:
            record.update(measure_load(name, args.out_dir / name))
        report[name] = record
        log.info("%s: %s", name, json.dumps(record))
        atomic.write_text(report_path, json.dumps(report, indent=2))
    log.info("wrote %s", write_config(args.out_dir))
    if args.smoke:
        log.info("wrote %s", write_smoke_data(args.out_dir))
        log.info("run from the repository root:\n  snakemake %s", " ".join(smoke_command(args.out_dir)))


if __name__ == "__main__":
    main()

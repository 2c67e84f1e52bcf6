"""Tiny-preset UniToken parts: a Chameleon LM (tokenizer with image-code tokens, VQ-VAE encoder) and a
SigLIP vision tower, built small with fixed-seed random weights and saved with ``save_pretrained``."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import (
    ChameleonConfig,
    ChameleonForConditionalGeneration,
    PreTrainedTokenizerFast,
    SiglipVisionConfig,
    SiglipVisionModel,
)

from workflow_scripts.tiny.uae import train_bpe
from workflow_scripts.unitoken.config import TinyLMSpec, TinyVisionSpec, TinyVQSpec
from workflow_scripts.unitoken.sequence import GRID_TOKENS, TOKEN_NAMES, code_token_name, grid_token_name
from workflow_scripts.unitoken.vq import vq_config


def build_lm(spec: TinyLMSpec, vq: TinyVQSpec, seed: int, corpus: list[str], out_dir: Path) -> None:
    """Chameleon's layout: text BPE with its special tokens (the new-line among them), one token per
    image code, then the grid-size tokens ``<reserved{8800+n}>`` of the released image layout."""
    core = train_bpe(corpus, spec.text_vocab_size, list(TOKEN_NAMES.values()))
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token=TOKEN_NAMES["bos"],
        eos_token=TOKEN_NAMES["eos"],
        pad_token=TOKEN_NAMES["pad"],
    )
    tokenizer.add_tokens([code_token_name(c) for c in range(vq.codebook_size)], special_tokens=True)
    tokenizer.add_tokens([grid_token_name(n) for n in GRID_TOKENS], special_tokens=True)
    vocabulary = tokenizer.get_vocab()
    config = ChameleonConfig(
        vocab_size=len(tokenizer),
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads,
        num_key_value_heads=spec.num_heads,
        max_position_embeddings=spec.max_positions,
        bos_token_id=vocabulary[TOKEN_NAMES["bos"]],
        eos_token_id=vocabulary[TOKEN_NAMES["eos"]],
        pad_token_id=vocabulary[TOKEN_NAMES["pad"]],
        vq_config=vq_config(vq).to_dict(),
        vocabulary_map=vocabulary,
    )
    torch.manual_seed(seed)
    ChameleonForConditionalGeneration(config).save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)


def build_vision(spec: TinyVisionSpec, seed: int, out_dir: Path) -> None:
    config = SiglipVisionConfig(
        image_size=spec.image_size,
        patch_size=spec.patch_size,
        hidden_size=spec.hidden_size,
        intermediate_size=2 * spec.hidden_size,
        num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads,
    )
    torch.manual_seed(seed)
    SiglipVisionModel(config).save_pretrained(out_dir)

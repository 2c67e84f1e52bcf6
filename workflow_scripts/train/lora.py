"""LoRA adapters through peft."""

from __future__ import annotations

import re

import torch

from workflow_scripts.train.config import LoraConfig


def add_lora(model: torch.nn.Module, cfg: LoraConfig, *, scope: str | None = None):
    """Wrap ``model`` in a peft model with adapters on ``cfg.target_modules``.

    ``scope`` restricts adapters to modules whose qualified name contains it (e.g. 'language_model'
    keeps Qwen2.5-VL's vision tower adapter-free, as the release does).
    """
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    names = "|".join(re.escape(t) for t in cfg.target_modules)
    prefix = rf".*{re.escape(scope)}.*\." if scope else r"(.*\.)?"
    peft_cfg = PeftLoraConfig(
        r=cfg.rank,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=rf"{prefix}({names})",
        init_lora_weights="gaussian" if cfg.init == "gaussian" else True,
    )
    return get_peft_model(model, peft_cfg)


def merged(model: torch.nn.Module) -> torch.nn.Module:
    """The base model with adapters folded into its weights (the model itself if it has none)."""
    return model.merge_and_unload() if hasattr(model, "merge_and_unload") else model

"""Tiny-preset reward backbones: the real library classes (open_clip, timm), random weights, saved in the
libraries' local-dir layouts so :func:`workflow_scripts.reward.backbones.load_backbone` reads them."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from workflow_scripts.models.config import LIBRARY, TinyBackboneSpec
from workflow_scripts.reward.backbones import OPEN_CLIP_CONFIG


def build_tiny(name: str, spec: TinyBackboneSpec, seed: int, out_dir: Path) -> None:
    """A random-weight backbone of the real library class, saved in the library's local-dir layout."""
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    if LIBRARY[name] == "open_clip":
        import open_clip

        model_cfg = {
            "embed_dim": spec.embed_dim,
            "vision_cfg": {
                "image_size": spec.image_size,
                "layers": spec.layers,
                "width": spec.width,
                "patch_size": spec.patch_size,
                "head_width": spec.width // spec.heads,
            },
            "text_cfg": {
                "context_length": spec.context_length,
                "vocab_size": 49408,
                "width": spec.width,
                "heads": spec.heads,
                "layers": 1,
            },
        }
        model = open_clip.CLIP(**model_cfg)
        _variance_preserving_init(model.visual)
        save_file(model.state_dict(), out_dir / "open_clip_model.safetensors")
        preprocess = {
            "mean": list(open_clip.OPENAI_DATASET_MEAN),
            "std": list(open_clip.OPENAI_DATASET_STD),
            "interpolation": "bicubic",
            "resize_mode": "shortest",
        }
        (out_dir / OPEN_CLIP_CONFIG).write_text(
            json.dumps({"model_cfg": model_cfg, "preprocess_cfg": preprocess})
        )
    else:
        import timm
        from timm.models import save_for_hf

        args = {
            "img_size": spec.image_size,
            "embed_dim": spec.width,
            "depth": spec.layers,
            "num_heads": spec.heads,
            "num_classes": 0,
        }
        model = timm.create_model(spec.architecture, pretrained=False, **args)
        _variance_preserving_init(model)
        # the preprocessing a checkpoint's config states is its own side: timm writes it from the
        # architecture's default config, which for an architecture without a fixed input size (DINOv3's
        # RoPE ViT) stays the published 256 px, so the 32-px tiny model would read every image upsampled to
        # 256 tokens (16x the work, measured: 0.64 s a training step against DINOv2's 0.04 s)
        model.pretrained_cfg = {**model.pretrained_cfg, "input_size": (3, spec.image_size, spec.image_size)}
        save_for_hf(model, str(out_dir), model_args=args, safe_serialization=True)


def _variance_preserving_init(model: torch.nn.Module) -> None:
    """LeCun-normal weights, zero biases, LayerScale 1 (tiny preset only).

    DINOv2's init (LayerScale 1e-5, weights std 0.02) leaves a 2-block random ViT's CLS feature
    independent of its input (cosine 1.0 between any two images); with unit-variance layers the tiny
    backbone's features respond to the image, so tiny rewards carry signal."""
    for name, param in model.named_parameters():
        if name.endswith(("ls1.gamma", "ls2.gamma")):
            torch.nn.init.ones_(param)
    for module in model.modules():
        if isinstance(module, torch.nn.Linear | torch.nn.Conv2d):
            fan_in = module.weight[0].numel()
            torch.nn.init.normal_(module.weight, std=fan_in**-0.5)
            if module.bias is not None:
                torch.nn.init.zeros_(module.bias)

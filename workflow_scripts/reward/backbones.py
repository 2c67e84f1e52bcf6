"""Image-feature backbones for reconstruction similarity, loaded once per job, frozen, batched.

Each backbone preprocesses exactly as its library says for that checkpoint: we take the library's own
eval transform (open_clip's ``preprocess``, timm's ``create_transform(resolve_data_config(model))``)
and apply its resize / centre-crop / normalise steps to float tensors, so the same code serves the
no-grad rewards and the differentiable cold-start loss.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torchvision import transforms as T

from workflow_scripts.config.typed import ConfigError
from workflow_scripts.reward.config import LIBRARY, TinyBackboneSpec

OPEN_CLIP_CONFIG = "open_clip_config.json"
TIMM_CONFIG = "config.json"
# steps of the libraries' PIL pipelines that a float tensor in [0, 1] does not need
_PIL_ONLY = {"MaybeToTensor", "ToTensor", "MaybeConvertMode", "_convert_to_rgb", "PILToTensor"}


@dataclass
class Backbone:
    name: str
    model: torch.nn.Module
    preprocess: Callable[[torch.Tensor], torch.Tensor]  # (B, 3, H, W) in [0, 1] -> model input
    features: Callable[[torch.Tensor], torch.Tensor]

    def embed(self, pixels: torch.Tensor) -> torch.Tensor:
        """L2-normalised image features of images in [0, 1]; differentiable in ``pixels``."""
        param = next(self.model.parameters())
        x = self.preprocess(pixels.to(param.device, torch.float32)).to(param.dtype)
        return torch.nn.functional.normalize(self.features(x).float(), dim=-1)


def tensor_pipeline(compose: T.Compose) -> Callable[[torch.Tensor], torch.Tensor]:
    """The library's transform minus its PIL-only steps, applied to a float batch."""
    steps = []
    for step in compose.transforms:
        name = getattr(step, "__name__", type(step).__name__)
        if name in _PIL_ONLY:
            continue
        if not isinstance(step, T.Resize | T.CenterCrop | T.Normalize):
            raise TypeError(f"unexpected preprocessing step {step!r}; cannot apply it to tensors")
        steps.append(step)
    return T.Compose(steps)


def load_backbone(
    name: str,
    path: str | Path | None,
    *,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
) -> Backbone:
    key = f"models.reward.{name}.path"
    if not path:
        raise ConfigError(
            f"config key '{key}' is not set: point it at a local {LIBRARY[name]} model directory"
        )
    folder = Path(path)
    marker = OPEN_CLIP_CONFIG if LIBRARY[name] == "open_clip" else TIMM_CONFIG
    if not (folder / marker).exists():
        raise ConfigError(
            f"config key '{key}': {folder} has no {marker} (a {LIBRARY[name]} 'local-dir' model)"
        )
    if LIBRARY[name] == "open_clip":
        import open_clip

        model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{folder}")
        features = model.encode_image
    else:
        import timm

        model = timm.create_model(f"local-dir:{folder}", pretrained=True, num_classes=0)
        preprocess = timm.data.create_transform(**timm.data.resolve_data_config({}, model=model))
        features = model
    model = model.to(device=device, dtype=dtype).eval().requires_grad_(False)
    return Backbone(name=name, model=model, preprocess=tensor_pipeline(preprocess), features=features)


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

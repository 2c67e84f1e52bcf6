"""Image-feature backbones for reconstruction similarity, loaded once per job, frozen, batched.

Each backbone preprocesses exactly as its library says for that checkpoint: we take the library's own
eval transform (open_clip's ``preprocess``, timm's ``create_transform(resolve_data_config(model))``)
and apply its resize / centre-crop / normalise steps to float tensors, so the same code serves the
no-grad rewards and the differentiable cold-start loss.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torchvision import transforms as T

from workflow_scripts.config.typed import ConfigError
from workflow_scripts.models.config import BACKBONES, LIBRARY

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


def load_backbones(paths: dict[str, Path], names, dtype: torch.dtype, device) -> dict[str, Backbone]:
    """Each reward backbone once per job, frozen, in eval mode."""
    return {name: load_backbone(name, paths[name], dtype=dtype, device=device) for name in names}


def reward_backbone_inputs(ctx_inputs: dict[str, str]) -> dict[str, Path]:
    return {name: Path(ctx_inputs[f"reward_{name}"]) for name in BACKBONES if f"reward_{name}" in ctx_inputs}

"""The tiny preset's reward-backbone training task and its validation measure.

Each backbone trains with its own family's objective, through the same library model the reward loads:
CLIP and LongCLIP (open_clip) with CLIP's symmetric InfoNCE between the image and its caption (open_clip's
``ClipLoss``, the model's learned temperature, its own tokenizer and context length); DINOv2 and DINOv3
(timm, image-only) with the same InfoNCE between two blurred views of one image, the batch's other images
as negatives (SimCLR's objective: DINO's self-distillation needs a teacher and many crops, which a 32-px
world cannot feed). Both teach what the reconstruction reward must see: which colours and shapes are
where. The export replaces only the weights of the random build, so the directory loads as a user's
downloaded one does (:func:`workflow_scripts.reward.backbones.load_backbone`).
"""

from __future__ import annotations

import math
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torchvision.transforms import functional as TF

from workflow_scripts.data.shards import ShardDataset
from workflow_scripts.models.config import LIBRARY
from workflow_scripts.reward.backbones import Backbone
from workflow_scripts.reward.pixels import to_unit
from workflow_scripts.seeding import derive_seed
from workflow_scripts.train.batches import BatchPlan

WEIGHTS = {"open_clip": "open_clip_model.safetensors", "timm": "model.safetensors"}
VALIDATION_BLUR = 1.0  # pixels: about a trained tiny VAE's reconstruction (eval/learning.py, InteriorColors)


def blur(pixels: torch.Tensor, sigmas: list[float]) -> torch.Tensor:
    """Each image of (B, 3, H, W) blurred by a Gaussian of its own sigma (pixels; 0 leaves it as it is)."""
    out = []
    for image, sigma in zip(pixels, sigmas, strict=True):
        if sigma <= 0:
            out.append(image)
            continue
        radius = max(1, int(2 * sigma + 0.5))
        out.append(TF.gaussian_blur(image, [2 * radius + 1] * 2, [sigma, sigma]))
    return torch.stack(out)


def info_nce(first: torch.Tensor, second: torch.Tensor, scale: torch.Tensor | float) -> torch.Tensor:
    """Symmetric InfoNCE of L2-normalised (B, D) features: row i of ``first`` against every row of
    ``second``, the matching row the positive (CLIP's loss; open_clip's ``ClipLoss`` on one process)."""
    from open_clip.loss import ClipLoss

    return ClipLoss()(first, second, scale)


class ContrastiveObjective(torch.nn.Module):
    """A backbone and its objective in one forward (module docstring), so an engine's wrap sees the whole
    computation. ``second`` is the images' caption tokens (open_clip) or the two views' blur sigmas."""

    def __init__(self, backbone: Backbone, temperature: float) -> None:
        super().__init__()
        self.model = backbone.model
        self.preprocess = backbone.preprocess
        self.library = LIBRARY[backbone.name]
        self.temperature = temperature

    def embed(self, pixels: torch.Tensor) -> torch.Tensor:
        features = self.model.encode_image if self.library == "open_clip" else self.model
        return F.normalize(features(self.preprocess(pixels)).float(), dim=-1)

    def forward(self, pixels: torch.Tensor, second) -> tuple[torch.Tensor, dict[str, float]]:
        if self.library == "open_clip":
            texts = self.model.encode_text(second.to(pixels.device), normalize=True)
            scale = self.model.logit_scale.exp()
            return info_nce(self.embed(pixels), texts, scale), {"logit_scale": float(scale.detach())}
        views = [self.embed(blur(pixels, sigmas)) for sigmas in second]
        return info_nce(views[0], views[1], 1.0 / self.temperature), {}


@dataclass
class BackboneTraining:
    """One reward backbone's training on the training split (objective: module docstring). The stage runs
    at the tiny preset only (~1,400 images of 32 px: 17 MB), so the split's pixels and caption tokens are
    read once."""

    base: Path  # the random build's directory, in the library's local-dir layout
    objective: ContrastiveObjective
    pixels: torch.Tensor  # (N, 3, H, W) in [0, 1]
    tokens: torch.Tensor | None  # (N, context) caption tokens (open_clip); None for image-only backbones
    plan: BatchPlan
    view_blur: tuple[float, float]
    name: str = "reward_train"

    @classmethod
    def on(
        cls, base: Path, objective: ContrastiveObjective, images: ShardDataset, plan: BatchPlan, view_blur
    ):
        records = [images[i] for i in range(len(images))]
        tokens = None
        if objective.library == "open_clip":
            from open_clip.tokenizer import SimpleTokenizer

            context = objective.model.context_length  # the loaded model's own text positions
            tokens = SimpleTokenizer(context_length=context)([r.caption for r in records])
        return cls(base, objective, to_unit([r.image for r in records]), tokens, plan, tuple(view_blur))

    def trainable(self) -> torch.nn.Module:
        return self.objective.train().requires_grad_(True)

    def micro_batches(self, step: int, rank: int, world: int) -> list[tuple[torch.Tensor, object]]:
        """(images in [0, 1], their caption tokens or the two views' blur sigmas): a resumed step draws the
        same views."""
        batches = []
        for chunk in self.plan.micro_batches(step, rank, world):
            index = torch.tensor([s.index for s in chunk])
            if self.tokens is not None:
                batches.append((self.pixels[index], self.tokens[index]))
            else:
                seed = derive_seed(self.plan.seed, "views", chunk[0].position)
                low, high = self.view_blur
                draws = torch.rand(2, len(chunk), generator=torch.Generator().manual_seed(seed))
                batches.append((self.pixels[index], (low + (high - low) * draws).tolist()))
        return batches

    def loss(self, model: torch.nn.Module, batch, step: int):
        pixels, second = batch
        return model(pixels, second)

    def after_step(self, model: torch.nn.Module, steps_done: int) -> None:
        """CLIP's temperature stays at most 100 (open_clip's training clamps it after every step)."""
        if self.objective.library == "open_clip":
            with torch.no_grad():
                self.objective.model.logit_scale.clamp_(0, math.log(100))

    def export(self, model: torch.nn.Module, out_dir: Path, *, final: bool) -> None:
        """The random build's directory with the trained weights in place of its own."""
        from safetensors.torch import save_file

        shutil.copytree(
            self.base, out_dir, dirs_exist_ok=True, ignore=shutil.ignore_patterns("provenance.json")
        )
        state = {k: v.detach().contiguous() for k, v in model.model.state_dict().items()}
        save_file(state, out_dir / WEIGHTS[model.library])


@torch.no_grad()
def separation(backbone: Backbone, pixels: torch.Tensor) -> dict[str, float]:
    """How far the reward can move, on held-out images: the backbone's similarity (cosine x 100, the
    reward's unit) of each image with its ``VALIDATION_BLUR``-pixel blur (a good reconstruction) and with
    the other images (a wrong one), and how often the blurred image's nearest original is its own."""
    if len(pixels) < 2:
        raise ValueError("separation needs at least 2 images; set data.splits.val_count >= 2")
    originals = backbone.embed(pixels)
    blurred = backbone.embed(blur(pixels, [VALIDATION_BLUR] * len(pixels)))
    others = ~torch.eye(len(pixels), dtype=torch.bool)
    nearest = (blurred @ originals.T).argmax(-1)
    return {
        "similarity_same": float((originals * blurred).sum(-1).mean() * 100),
        "similarity_other": float((originals @ originals.T)[others].mean() * 100),
        "retrieval_top1": float((nearest == torch.arange(len(pixels))).float().mean()),
    }

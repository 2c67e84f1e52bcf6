"""Training of the tiny decoder's autoencoder on the data stage's images (tiny preset)."""

from __future__ import annotations

from dataclasses import dataclass

from workflow_scripts.config.typed import doc
from workflow_scripts.train.config import LoopConfig


@dataclass(frozen=True, kw_only=True, slots=True)
class VAETrainConfig:
    """SD3.5's VAE is pretrained; the tiny preset's is random, so its decoder does not invert its encoder
    and nothing drawn through it can look like anything. This stage trains it (the same AutoencoderKL
    class) before decoder pretraining, as unitoken_vq trains UniToken's tokenizer."""

    enabled: bool = doc(
        "Train the tiny VAE before decoder pretraining (only with models.source 'tiny'; a published "
        "decoder's VAE is used as it is)."
    )
    resolution: int = doc("Training image side in pixels (one of data.resolutions).")
    kl_weight: float = doc("Weight of the KL term against the reconstruction MSE.")
    loop: LoopConfig = doc("Steps, batch, optimiser, checkpoints.")

    def __post_init__(self) -> None:
        if self.kl_weight < 0:
            raise ValueError("vae.kl_weight must be >= 0")

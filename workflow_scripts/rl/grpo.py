"""GRPO and Flow-GRPO arithmetic as pure functions (tested against hand-computed values).

Text (Stage 2a), per token t of completion i:
    A_i = (r_i - mean(r)) / (std(r) + eps)                 group-relative advantage
    rho = exp(logp - logp_old)                             1 on the first inner iteration
    surrogate = min(rho A, clip(rho, 1 - e, 1 + e) A)
    KL_k3 = exp(ref - logp) - (ref - logp) - 1             >= 0
    loss_t = -(surrogate - beta KL_k3), aggregated by 'grpo' / 'bnpo' / 'dapo'

Flow matching (Stage 2b), one step sigma -> sigma' (dt = sigma' - sigma < 0), velocity v, latent x:
    s = a sqrt(sigma / (1 - sigma*)),  sigma* = sigmas[1] where sigma = 1 else sigma  (denominator only)
    mean = x (1 + s^2 / (2 sigma) dt) + v (1 + s^2 (1 - sigma) / (2 sigma)) dt
    x' = mean + s sqrt(-dt) eps;  log p(x') = Normal(mean, s sqrt(-dt)) averaged over latent dims
    loss = mean(max(-A rho, -A clip(rho, 1 - e, 1 + e))),  KL = mean_dims (mean - mean_ref)^2 / (2 s^2)
(Flow-GRPO's KL omits the sqrt(-dt) factor from s: it is the exact Gaussian KL times -dt.)
"""

from __future__ import annotations

import math
from typing import Literal

import torch


def group_advantages(
    rewards: torch.Tensor,
    group_size: int,
    *,
    std: Literal["sample", "population"],
    scale: Literal["group", "batch", "none"],
    eps: float,
    batch_rewards: torch.Tensor | None = None,
) -> torch.Tensor:
    """Advantages of ``rewards`` laid out group after group. ``batch_rewards`` (all processes' rewards)
    gives the std for scale='batch'; it defaults to ``rewards``."""
    grouped = rewards.float().view(-1, group_size)
    centred = grouped - grouped.mean(dim=1, keepdim=True)
    unbiased = std == "sample"
    if scale == "group":
        return (centred / (grouped.std(dim=1, unbiased=unbiased, keepdim=True) + eps)).flatten()
    if scale == "batch":
        pool = (rewards if batch_rewards is None else batch_rewards).float()
        return (centred / (pool.std(unbiased=unbiased) + eps)).flatten()
    return centred.flatten()


def clipped_surrogate(ratio: torch.Tensor, advantages: torch.Tensor, epsilon: float) -> torch.Tensor:
    return torch.minimum(ratio * advantages, ratio.clamp(1 - epsilon, 1 + epsilon) * advantages)


def k3_kl(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    delta = ref_logp - logp
    return torch.exp(delta) - delta - 1


def aggregate(
    per_token: torch.Tensor,
    mask: torch.Tensor,
    mode: Literal["grpo", "bnpo", "dapo"],
    normalizer: float | None = None,
) -> torch.Tensor:
    """Reduce a (completions, tokens) loss with its 0/1 mask."""
    mask = mask.to(per_token.dtype)
    if mode == "grpo":
        return ((per_token * mask).sum(1) / mask.sum(1).clamp(min=1)).mean()
    if mode == "bnpo":
        return (per_token * mask).sum() / mask.sum().clamp(min=1)
    if normalizer is None:
        raise ValueError("dapo needs the global token count divided by the number of processes")
    return (per_token * mask).sum() / normalizer


def token_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    ref_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    epsilon: float,
    beta: float,
    mode: Literal["grpo", "bnpo", "dapo"],
    normalizer: float | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """GRPO loss of (completions, tokens) log-probs; advantages are per completion."""
    ratio = torch.exp(logp - old_logp)
    adv = advantages[:, None]
    surrogate = clipped_surrogate(ratio, adv, epsilon)
    kl = k3_kl(logp, ref_logp)
    loss = aggregate(-(surrogate - beta * kl), mask, mode, normalizer)
    m = mask.bool()
    clipped = ((ratio < 1 - epsilon) & (adv < 0)) | ((ratio > 1 + epsilon) & (adv > 0))
    stats = {
        "kl": float(kl[m].mean()) if m.any() else 0.0,
        "clip_fraction": float(clipped[m].float().mean()) if m.any() else 0.0,
        "ratio_mean": float(ratio[m].mean()) if m.any() else 1.0,
    }
    return loss, stats


# --- flow matching (Flow-GRPO) ---------------------------------------------------------------------
def sde_std(sigma: torch.Tensor, sigma_1: float, noise_level: float) -> torch.Tensor:
    """s = a sqrt(sigma / (1 - sigma*)); sigma* replaces sigma = 1 by sigmas[1] in the denominator only."""
    denominator = 1 - torch.where(sigma == 1, torch.as_tensor(sigma_1, dtype=sigma.dtype), sigma)
    return noise_level * torch.sqrt(sigma / denominator)


def sde_mean(
    x: torch.Tensor, v: torch.Tensor, sigma: torch.Tensor, sigma_next: torch.Tensor, s: torch.Tensor
):
    dt = sigma_next - sigma
    return x * (1 + s**2 / (2 * sigma) * dt) + v * (1 + s**2 * (1 - sigma) / (2 * sigma)) * dt


def gaussian_logprob(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """log N(x; mean, std^2) averaged over every dim but the first (Flow-GRPO's reduction)."""
    logp = -((x - mean) ** 2) / (2 * std**2) - torch.log(std) - math.log(math.sqrt(2 * math.pi))
    return logp.mean(dim=tuple(range(1, logp.ndim)))


def flow_kl(mean: torch.Tensor, ref_mean: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """Per-sample mean over dims of (mean - ref)^2 / (2 s^2), s without sqrt(-dt) (Flow-GRPO's KL)."""
    kl = (mean - ref_mean) ** 2 / (2 * s**2)
    return kl.mean(dim=tuple(range(1, kl.ndim)))


def flow_policy_loss(logp, old_logp, advantages, *, epsilon: float, advantage_clip: float):
    """mean(max(-A rho, -A clip(rho))) with A clipped to +-advantage_clip; also the clip fraction."""
    adv = advantages.clamp(-advantage_clip, advantage_clip)
    ratio = torch.exp(logp - old_logp)
    loss = torch.maximum(-adv * ratio, -adv * ratio.clamp(1 - epsilon, 1 + epsilon)).mean()
    clip_fraction = float(((ratio - 1).abs() > epsilon).float().mean())
    return loss, clip_fraction

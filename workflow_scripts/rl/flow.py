"""Flow-matching sampling with per-step log-probabilities (Flow-GRPO) and partial gradients (DRaFT-K).

The schedule is diffusers' FlowMatchEulerDiscreteScheduler (``set_timesteps``: shifted sigmas from 1
to 0). With ``noise_level = 0`` each step is the scheduler's Euler step x + v dt; with a > 0 it is the
SDE step whose marginals match the ODE (see :mod:`workflow_scripts.rl.grpo`).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from workflow_scripts.rl import grpo


@dataclass
class Schedule:
    sigmas: torch.Tensor  # (T + 1,) from 1 down to 0
    timesteps: torch.Tensor  # (T,) what the transformer is told: sigma * num_train_timesteps

    @classmethod
    def of(cls, scheduler, steps: int) -> Schedule:
        scheduler = copy.deepcopy(scheduler)
        scheduler.set_timesteps(steps)
        return cls(sigmas=scheduler.sigmas.float().cpu(), timesteps=scheduler.timesteps.float().cpu())

    @property
    def steps(self) -> int:
        return len(self.timesteps)


def cfg_velocity(
    transformer, x, timestep, prompt_embeds, negative_embeds, pooled, guidance: float
) -> torch.Tensor:
    """Classifier-free guided velocity, negative first as in diffusers' SD3 pipeline."""
    batch = x.shape[0]
    negative = negative_embeds.expand(batch, -1, -1) if negative_embeds.shape[0] == 1 else negative_embeds
    out = transformer(
        hidden_states=torch.cat([x, x]),
        timestep=timestep.expand(2 * batch).to(x.device),
        encoder_hidden_states=torch.cat([negative, prompt_embeds]),
        pooled_projections=torch.cat([pooled, pooled]),
        return_dict=False,
    )[0]
    uncond, cond = out.float().chunk(2)
    return uncond + guidance * (cond - uncond)


def initial_noise(shape: Sequence[int], seeds: Sequence[int]) -> tuple[torch.Tensor, list[torch.Generator]]:
    """One generator per sample: its starting noise and, later, its SDE noise come from it alone."""
    generators = [torch.Generator().manual_seed(int(s)) for s in seeds]
    return torch.stack([torch.randn(tuple(shape), generator=g) for g in generators]), generators


@dataclass
class Trajectory:
    latents: list[torch.Tensor]  # T + 1 states, (B, C, h, w) each, float32
    logps: torch.Tensor  # (T, B): log p of each transition under the sampling policy (SDE only)


def sample(
    transformer,
    prompt_embeds: torch.Tensor,
    negative_embeds: torch.Tensor,
    pooled: torch.Tensor,
    noise: torch.Tensor,
    schedule: Schedule,
    *,
    guidance: float,
    noise_level: float = 0.0,
    generators: Sequence[torch.Generator] | None = None,
    grad_from: int | None = None,
) -> Trajectory:
    """Integrate from noise (sigma = 1) to data (sigma = 0).

    ``grad_from``: steps from this index on keep the autograd graph (DRaFT-K); None = no gradients.
    """
    device = prompt_embeds.device
    x = noise.to(device, torch.float32)
    states, logps = [x], []
    sigma_1 = float(schedule.sigmas[1])
    for i in range(schedule.steps):
        sigma, sigma_next = schedule.sigmas[i].to(device), schedule.sigmas[i + 1].to(device)
        with torch.set_grad_enabled(grad_from is not None and i >= grad_from):
            v = cfg_velocity(
                transformer,
                x.to(prompt_embeds.dtype),
                schedule.timesteps[i],
                prompt_embeds,
                negative_embeds,
                pooled,
                guidance,
            )
            if noise_level == 0:
                x = x + v * (sigma_next - sigma)
            else:
                s = grpo.sde_std(sigma, sigma_1, noise_level)
                mean = grpo.sde_mean(x, v, sigma, sigma_next, s)
                step_std = s * torch.sqrt(sigma - sigma_next)
                eps = torch.stack([torch.randn(x.shape[1:], generator=g) for g in generators]).to(device)
                x = mean + step_std * eps
                logps.append(grpo.gaussian_logprob(x.detach(), mean.detach(), step_std))
        states.append(x)
    return Trajectory(latents=states, logps=torch.stack(logps) if logps else torch.empty(0))

"""GRPO / Flow-GRPO arithmetic against hand-computed values and against diffusers' scheduler."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel

from workflow_scripts.rl import grpo
from workflow_scripts.rl.flow import Schedule, cfg_velocity, initial_noise, sample


def test_group_advantages_sample_vs_population_std():
    rewards = torch.tensor([1.0, 2.0, 3.0, 4.0])
    centred = torch.tensor([-1.5, -0.5, 0.5, 1.5])
    sample_std, population_std = math.sqrt(5 / 3), math.sqrt(5 / 4)
    a = grpo.group_advantages(rewards, 4, std="sample", scale="group", eps=1e-4)
    b = grpo.group_advantages(rewards, 4, std="population", scale="group", eps=1e-4)
    torch.testing.assert_close(a, centred / (sample_std + 1e-4))
    torch.testing.assert_close(b, centred / (population_std + 1e-4))
    assert float(b[3] / a[3]) == pytest.approx(1.1547, abs=1e-3)  # grpo.md: ~1.15x for G = 4


def test_group_advantages_groups_batch_and_none():
    rewards = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 5.0, 5.0, 5.0])
    grouped = grpo.group_advantages(rewards, 4, std="sample", scale="group", eps=1e-4)
    assert torch.all(grouped[4:] == 0)  # a group with equal rewards teaches nothing
    batch = grpo.group_advantages(rewards, 4, std="population", scale="batch", eps=1e-4)
    torch.testing.assert_close(
        batch[:4], torch.tensor([-1.5, -0.5, 0.5, 1.5]) / (rewards.std(unbiased=False) + 1e-4)
    )
    everyone = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 5.0, 5.0, 5.0, 0.0, 10.0])
    pooled = grpo.group_advantages(rewards, 4, std="sample", scale="batch", eps=0.0, batch_rewards=everyone)
    torch.testing.assert_close(pooled[:4], torch.tensor([-1.5, -0.5, 0.5, 1.5]) / everyone.std())
    torch.testing.assert_close(
        grpo.group_advantages(rewards, 4, std="sample", scale="none", eps=1e-4)[:4],
        torch.tensor([-1.5, -0.5, 0.5, 1.5]),
    )


def test_clipped_surrogate_hand_values():
    ratio = torch.tensor([1.5, 0.5, 0.5, 1.5, 1.0])
    adv = torch.tensor([2.0, 2.0, -2.0, -2.0, 3.0])
    expected = torch.tensor([2.4, 1.0, -1.6, -3.0, 3.0])
    torch.testing.assert_close(grpo.clipped_surrogate(ratio, adv, 0.2), expected)


def test_k3_kl_hand_values():
    logp, ref = torch.log(torch.tensor([0.5, 0.3])), torch.log(torch.tensor([0.25, 0.3]))
    torch.testing.assert_close(grpo.k3_kl(logp, ref), torch.tensor([0.5 + math.log(2) - 1, 0.0]))
    assert torch.all(grpo.k3_kl(torch.randn(100), torch.randn(100)) >= 0)


def test_aggregations_hand_values():
    per_token = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    assert float(grpo.aggregate(per_token, mask, "grpo")) == pytest.approx((1.5 + 4) / 2)
    assert float(grpo.aggregate(per_token, mask, "bnpo")) == pytest.approx(7 / 3)
    assert float(grpo.aggregate(per_token, mask, "dapo", normalizer=5.0)) == pytest.approx(7 / 5)
    with pytest.raises(ValueError, match="dapo"):
        grpo.aggregate(per_token, mask, "dapo")


def test_token_loss_at_rho_one_is_minus_the_mean_advantage():
    logp = torch.log(torch.tensor([[0.5, 0.4], [0.2, 0.9]]))
    adv = torch.tensor([1.0, -3.0])
    mask = torch.ones(2, 2)
    loss, stats = grpo.token_loss(logp, logp, logp, adv, mask, epsilon=0.2, beta=0.01, mode="grpo")
    assert float(loss) == pytest.approx(-(1.0 - 3.0) / 2)
    assert stats["kl"] == 0 and stats["clip_fraction"] == 0 and stats["ratio_mean"] == 1
    # with a reference that differs, the KL term adds beta * k3
    ref = logp + math.log(0.5)
    loss_kl, stats = grpo.token_loss(logp, logp, ref, adv, mask, epsilon=0.2, beta=0.01, mode="grpo")
    k3 = 0.5 + math.log(2) - 1
    assert float(loss_kl - loss) == pytest.approx(0.01 * k3, rel=1e-4)  # float32
    assert stats["kl"] == pytest.approx(k3, rel=1e-5)


def test_sde_step_hand_values():
    sigma, sigma_next = torch.tensor(0.8), torch.tensor(0.6)
    s = grpo.sde_std(sigma, sigma_1=0.95, noise_level=0.7)
    assert float(s) == pytest.approx(0.7 * math.sqrt(0.8 / 0.2))
    mean = grpo.sde_mean(torch.tensor(1.0), torch.tensor(2.0), sigma, sigma_next, s)
    assert float(mean) == pytest.approx(1 * (1 - 1.96 / 1.6 * 0.2) - 2 * (1 + 1.96 * 0.2 / 1.6) * 0.2)
    # at sigma = 1 the denominator uses sigmas[1] (numerator keeps 1)
    assert float(grpo.sde_std(torch.tensor(1.0), sigma_1=0.9, noise_level=0.7)) == pytest.approx(
        0.7 * math.sqrt(10)
    )
    # noise level 0 is the Euler step x + v dt
    zero = grpo.sde_std(sigma, 0.95, 0.0)
    assert float(
        grpo.sde_mean(torch.tensor(1.0), torch.tensor(2.0), sigma, sigma_next, zero)
    ) == pytest.approx(1 - 0.4)


def test_gaussian_logprob_equals_torch_normal_averaged_over_dims():
    x, mean = torch.randn(3, 4, 5, 5), torch.randn(3, 4, 5, 5)
    std = torch.tensor(0.37)
    expected = torch.distributions.Normal(mean, std).log_prob(x).mean(dim=(1, 2, 3))
    torch.testing.assert_close(grpo.gaussian_logprob(x, mean, std), expected)


def test_flow_kl_and_policy_loss_hand_values():
    mean = torch.full((2, 3), 0.5)
    assert torch.all(grpo.flow_kl(mean, mean, torch.tensor(1.4)) == 0)
    torch.testing.assert_close(
        grpo.flow_kl(mean + 0.2, mean, torch.tensor(1.4)), torch.full((2,), 0.04 / (2 * 1.96))
    )
    logp = torch.tensor([-1.0, -2.0])
    loss, clipped = grpo.flow_policy_loss(
        logp, logp, torch.tensor([10.0, -1.0]), epsilon=1e-4, advantage_clip=5.0
    )
    assert float(loss) == pytest.approx((-5.0 + 1.0) / 2) and clipped == 0


def _tiny_transformer():
    torch.manual_seed(0)
    return SD3Transformer2DModel(
        sample_size=8,
        patch_size=2,
        in_channels=4,
        out_channels=4,
        num_layers=1,
        attention_head_dim=8,
        num_attention_heads=2,
        joint_attention_dim=16,
        caption_projection_dim=16,
        pooled_projection_dim=8,
        pos_embed_max_size=16,
    ).eval()


def test_noise_level_zero_reproduces_diffusers_euler_trajectory():
    transformer = _tiny_transformer()
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
    prompt, negative, pooled = torch.randn(2, 5, 16), torch.randn(1, 5, 16), torch.randn(2, 8)
    noise, _ = initial_noise((4, 8, 8), seeds=[1, 2])
    with torch.no_grad():
        ours = sample(transformer, prompt, negative, pooled, noise, Schedule.of(scheduler, 6), guidance=4.0)
        reference = copy.deepcopy(scheduler)
        reference.set_timesteps(6)
        x, theirs = noise.clone(), [noise.clone()]
        for t in reference.timesteps:
            v = cfg_velocity(transformer, x, t, prompt, negative, pooled, 4.0)
            x = reference.step(v, t, x).prev_sample
            theirs.append(x)
    assert len(ours.latents) == 7
    for a, b in zip(ours.latents, theirs, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_sde_sampling_logprobs_match_recomputed_normal_densities():
    transformer = _tiny_transformer()
    schedule = Schedule.of(FlowMatchEulerDiscreteScheduler(shift=3.0), 4)
    prompt, negative, pooled = torch.randn(2, 5, 16), torch.randn(1, 5, 16), torch.randn(2, 8)
    noise, generators = initial_noise((4, 8, 8), seeds=[3, 4])
    with torch.no_grad():
        traj = sample(
            transformer,
            prompt,
            negative,
            pooled,
            noise,
            schedule,
            guidance=4.0,
            noise_level=0.7,
            generators=generators,
        )
        sigma_1 = float(schedule.sigmas[1])
        for i in range(schedule.steps):
            sigma, nxt = schedule.sigmas[i], schedule.sigmas[i + 1]
            v = cfg_velocity(
                transformer, traj.latents[i], schedule.timesteps[i], prompt, negative, pooled, 4.0
            )
            s = grpo.sde_std(sigma, sigma_1, 0.7)
            mean = grpo.sde_mean(traj.latents[i], v, sigma, nxt, s)
            density = torch.distributions.Normal(mean, s * torch.sqrt(sigma - nxt))
            expected = density.log_prob(traj.latents[i + 1]).mean(dim=(1, 2, 3))
            torch.testing.assert_close(traj.logps[i], expected, rtol=1e-4, atol=1e-4)
    # a sample's noise depends on its own seed only
    noise_b, gens_b = initial_noise((4, 8, 8), seeds=[4])
    with torch.no_grad():
        alone = sample(
            transformer,
            prompt[1:],
            negative,
            pooled[1:],
            noise_b,
            schedule,
            guidance=4.0,
            noise_level=0.7,
            generators=gens_b,
        )
    torch.testing.assert_close(alone.latents[-1][0], traj.latents[-1][1], rtol=1e-4, atol=1e-5)

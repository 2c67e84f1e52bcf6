"""Stage 2a, generation for understanding: GRPO on the encoder's LoRA with the reconstruction reward.

Per image the policy samples G captions; the frozen decoder redraws each one from the same diffusion
noise (the caption is the only thing that differs); the reward scores each redraw against the original.
With ``rl.reader: captioner`` (the release: one LLM captions and conditions) the decoder reads the
captions through the policy's LLM, adapter enabled, so the policy changes both the caption text and how
it is read; the reward is computed without gradient (GRPO's gradient reaches the policy through the
caption tokens' log-probabilities only). With ``reader: pretrained`` (ablation) it reads them with the
adapter disabled, the encoder RL started from, so only the caption text changes. The KL reference is
the adapter-disabled policy either way.
"""

from __future__ import annotations

import logging
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch

from workflow_scripts.data.shards import ShardDataset
from workflow_scripts.models.conditioning import ConditioningSpec, condition
from workflow_scripts.models.decoder import Decoder
from workflow_scripts.models.encoder import CaptionPrompt, Encoder, export_encoder
from workflow_scripts.reward.functions import RewardInputs, RewardModel
from workflow_scripts.reward.pixels import to_unit
from workflow_scripts.rl import grpo
from workflow_scripts.rl.common import Cycles, SampleWriter, gather, reward_stats
from workflow_scripts.rl.config import EncoderRLConfig
from workflow_scripts.seeding import derive_seed
from workflow_scripts.train.batches import BatchPlan
from workflow_scripts.train.lora import add_lora

log = logging.getLogger(__name__)


@dataclass
class CaptionGroups:
    """One micro-batch: G captions of each of its images, as prompt + completion rows."""

    inputs: dict[
        str, torch.Tensor
    ]  # input_ids, attention_mask, pixel_values, image_grid_thw, mm_token_type_ids
    completion_mask: torch.Tensor  # (N, L - 1): 1 where the target token is part of a caption
    ref_logp: torch.Tensor  # (N, L - 1) under the adapter-disabled reference
    advantages: torch.Tensor  # (N,)
    stats: dict[str, float]
    normalizer: float | None = None  # dapo only
    old_logp: torch.Tensor | None = field(default=None, repr=False)


def completion_logprobs(
    model, inputs: dict[str, torch.Tensor], temperature: float, completion_mask: torch.Tensor
) -> torch.Tensor:
    """log pi(token) at the sampling temperature (as TRL does), (N, L - 1) like ``completion_mask``.

    Only the positions from the first one that predicts a completion token go through the LM head
    (``logits_to_keep``, as TRL's GRPOTrainer): the prompt's vision tokens and instruction are most of
    a row, and at a 151K vocabulary their logits and log-softmax were most of the update's cost.
    Positions before that are 0 (no row has a target there)."""
    device = next(model.parameters()).device
    width = inputs["input_ids"].shape[1]
    targeted = completion_mask.bool().any(0).nonzero()
    first = int(targeted[0]) if len(targeted) else width - 1
    out = model(**{k: v.to(device) for k, v in inputs.items()}, logits_to_keep=width - first)
    logits = out.logits[:, :-1].float() / temperature  # positions first .. L - 2
    targets = inputs["input_ids"][:, first + 1 :].to(device)
    picked = logits.gather(-1, targets[..., None]).squeeze(-1) - torch.logsumexp(logits, dim=-1)
    return torch.nn.functional.pad(picked, (first, 0))


@dataclass
class EncoderGRPO:
    cfg: EncoderRLConfig
    encoder: Encoder
    decoder: Decoder
    reward: RewardModel
    dataset: ShardDataset
    plan: BatchPlan
    seed: int
    instruction: CaptionPrompt
    conditioning: ConditioningSpec
    max_text_tokens: int
    samples: SampleWriter
    start: Path
    reader: str = "captioner"  # rl.reader
    name: str = "rl_encoder"

    def trainable(self) -> torch.nn.Module:
        self.encoder.model.requires_grad_(False)
        self.policy = add_lora(self.encoder.model, self.cfg.lora, scope="language_model")
        self.encoder.model = self.policy
        self.cycles = Cycles(self.cfg.grpo)
        return self.policy

    # --- rollout ---------------------------------------------------------------------------------
    def micro_batches(self, step: int, rank: int, world: int) -> list[CaptionGroups]:
        return self.cycles.get(step, lambda s: self._rollout(s, rank, world))

    def reading(self):
        """Context in which the policy's LLM is the decoder's caption reader (see the module doc)."""
        return nullcontext() if self.reader == "captioner" else self.policy.disable_adapter()

    @torch.no_grad()
    def _rollout(self, step: int, rank: int, world: int) -> list[CaptionGroups]:
        self.policy.eval()
        chunks = self.plan.micro_batches(step, rank, world)
        groups = [
            [self._sample(position, index) for position, index in ((s.position, s.index) for s in c)]
            for c in chunks
        ]
        rewards = torch.cat([g["rewards"] for chunk in groups for g in chunk])
        advantages = grpo.group_advantages(
            rewards,
            self.cfg.grpo.group_size,
            std=self.cfg.grpo.std,
            scale=self.cfg.grpo.scale,
            eps=self.cfg.grpo.advantage_epsilon,
            batch_rewards=gather(rewards),
        )
        terms = {
            k: torch.cat([g["terms"][k] for chunk in groups for g in chunk]) for k in groups[0][0]["terms"]
        }
        stats = reward_stats(rewards, terms, advantages)
        stats["caption_words"] = sum(
            len(c.split()) for chunk in groups for g in chunk for c in g["captions"]
        ) / len(rewards)
        stats["caption_tokens"] = float(
            torch.cat([g["mask"].sum(1) for chunk in groups for g in chunk]).float().mean()
        )
        normalizer = None
        if self.cfg.loss_aggregation == "dapo":
            tokens = torch.tensor(float(sum(int(g["mask"].sum()) for chunk in groups for g in chunk)))
            # the loop averages micro-batches: fold their count in, so a step is sum / (N_global / world)
            normalizer = float(gather(tokens[None]).sum()) / max(1, world) / len(chunks)
        batches, offset = [], 0
        for chunk in groups:
            count = sum(len(g["captions"]) for g in chunk)
            batches.append(self._batch(chunk, advantages[offset : offset + count], stats, normalizer))
            offset += count
        if rank == 0:
            first = [g for chunk in groups for g in chunk]
            self.samples.maybe_write(
                step,
                [g["image"] for g in first],
                [g["captions"][0] for g in first],
                [g["recons"][0] for g in first],
                [float(g["rewards"][0]) for g in first],
            )
        self.policy.train()
        return batches

    def _sample(self, position: int, index: int) -> dict:
        record = self.dataset[index]
        G = self.cfg.grpo.group_size
        prompt = self.encoder.caption_inputs([record.image], self.instruction)
        device = next(self.policy.parameters()).device
        torch.manual_seed(derive_seed(self.seed, "captions", position))
        out = self.policy.generate(
            **prompt.to(device),
            do_sample=True,
            temperature=self.cfg.temperature,
            # the ratio's log-probs are of softmax(logits / T): sample from exactly that, whatever a
            # model directory's generation_config sets (Qwen2.5-VL-Instruct ships top_k 1, top_p 0.001 and a
            # repetition penalty, which would make every rollout of a group the same caption)
            top_k=0,
            top_p=1.0,
            repetition_penalty=1.0,
            max_new_tokens=self.cfg.max_new_tokens,
            num_return_sequences=G,
            suppress_tokens=self.encoder.vision_token_ids,  # captions are text (see Encoder)
        )
        completions = out[:, prompt["input_ids"].shape[1] :].cpu()
        mask = _through_first(completions, self.encoder.end_of_turn_id)
        captions = [
            t.strip()
            for t in self.encoder.tokenizer.batch_decode(completions * mask, skip_special_tokens=True)
        ]
        with self.reading():
            embeds, negative = condition(self.encoder, self.decoder.projector, captions, self.conditioning)
        shared = derive_seed(self.seed, "reconstruction", position)  # same noise for the G captions
        recons = self.decoder.generate(
            embeds,
            negative,
            seeds=[shared] * G,
            steps=self.cfg.reconstruction_steps,
            guidance_scale=self.cfg.guidance_scale,
            resolution=self.cfg.resolution,
        )
        rewards, terms = self.reward(RewardInputs(to_unit([record.image] * G), to_unit(recons), captions))
        return {
            "image": record.image,
            "prompt": prompt,
            "completions": completions,
            "mask": mask,
            "captions": captions,
            "recons": recons,
            "rewards": rewards,
            "terms": terms,
        }

    def _batch(self, chunk: list[dict], advantages, stats, normalizer) -> CaptionGroups:
        """Rows of prompt + completion, right-padded; tokens after a caption's end-of-turn are padding."""
        rows, attentions, targets, pixel_values, grids = [], [], [], [], []
        for g in chunk:
            prompt_ids = g["prompt"]["input_ids"][0]
            for completion, mask in zip(g["completions"], g["mask"], strict=True):
                rows.append(torch.cat([prompt_ids, completion]))
                attentions.append(torch.cat([torch.ones(len(prompt_ids), dtype=torch.long), mask]))
                targets.append(torch.cat([torch.zeros(len(prompt_ids) - 1), mask.float()]))
                pixel_values.append(g["prompt"]["pixel_values"])
                grids.append(g["prompt"]["image_grid_thw"])
        width = max(len(r) for r in rows)
        input_ids = torch.full((len(rows), width), self.encoder.tokenizer.pad_token_id, dtype=torch.long)
        attention = torch.zeros((len(rows), width), dtype=torch.long)
        completion_mask = torch.zeros((len(rows), width - 1))
        for i, (row, att, target) in enumerate(zip(rows, attentions, targets, strict=True)):
            input_ids[i, : len(row)] = row
            attention[i, : len(att)] = att
            completion_mask[i, : len(target)] = target
        inputs = {
            "input_ids": input_ids,
            "attention_mask": attention,
            "pixel_values": torch.cat(pixel_values),
            "image_grid_thw": torch.cat(grids),
            "mm_token_type_ids": (input_ids == self.encoder.image_token_id).int(),
        }
        with self.policy.disable_adapter():
            ref = completion_logprobs(self.policy, inputs, self.cfg.temperature, completion_mask).cpu()
        return CaptionGroups(inputs, completion_mask, ref, advantages, stats, normalizer)

    # --- update ----------------------------------------------------------------------------------
    def loss(self, model, batch: CaptionGroups, step: int):
        logp = completion_logprobs(model, batch.inputs, self.cfg.temperature, batch.completion_mask)
        if step % self.cfg.grpo.inner_iterations == 0:
            batch.old_logp = logp.detach()  # the sampling policy: rho = 1 on the first inner iteration
        device = logp.device
        loss, stats = grpo.token_loss(
            logp,
            batch.old_logp.to(device),
            batch.ref_logp.to(device),
            batch.advantages.to(device),
            batch.completion_mask.to(device),
            epsilon=self.cfg.grpo.clip_epsilon,
            beta=self.cfg.grpo.beta,
            mode=self.cfg.loss_aggregation,
            normalizer=batch.normalizer,
        )
        return loss, {**stats, **batch.stats}

    def export(self, model, out_dir: Path, *, final: bool) -> None:
        export_encoder(model, self.encoder.processor, out_dir, lora=True, final=final, start=self.start)


def _through_first(completions: torch.Tensor, eos: int) -> torch.Tensor:
    """1 on each completion's tokens up to and including its first end-of-turn, 0 after."""
    is_eos = completions == eos
    after = (is_eos.cumsum(1) - is_eos.long()) > 0
    return (~after).long()

"""Per-GPU memory of the paper preset's RL and pretraining stages: ``python bench/memory_estimate.py``.

Weights, LoRA optimiser state and the dominant activations, from the published architectures' sizes and
the paper preset's batch geometry. An estimate for planning (it ignores allocator fragmentation and
temporary buffers); measure on the cluster with torch.cuda.max_memory_allocated.
"""

from __future__ import annotations

from dataclasses import dataclass

from workflow_scripts.catalog import resources
from workflow_scripts.config.loader import parse, resolve

GB = 1024**3
BF16, FP32_ADAM = 2, 16  # bytes per weight; fp32 master + grad + two Adam moments


@dataclass(frozen=True)
class Arch:
    params: float
    layers: int
    hidden: int


# published sizes: Qwen2.5-VL-3B (LLM 36 x 2048, FFN 11008, 2 KV heads of 128; vocab 151936),
# SD3.5-Large MMDiT (38 joint blocks x 2432), CLIP/LongCLIP ViT-L/14, DINOv2 ViT-L/14
QWEN = Arch(3.75e9, 36, 2048)
QWEN_LINEARS = [
    (2048, 2048),
    (2048, 256),
    (2048, 256),
    (2048, 2048),
    (2048, 11008),
    (2048, 11008),
    (11008, 2048),
]
VOCAB = 151936
SD35 = Arch(8.1e9, 38, 2432)
SD35_LINEARS = [(2432, 2432)] * 8
VAE, PROJECTOR = 0.084e9, 2048 * 8192 + 8192 * 4096
CLIP_L, DINO_L = 0.428e9, 0.304e9


PLACEHOLDER_PATHS = {
    "models": {
        "encoder": {"path": "qwen"},
        "decoder": {"path": "sd35"},
        "reward": {k: {"path": k} for k in ("clip", "longclip", "dinov2", "dinov3")},
    },
    "data": {
        "sources": {"folder": {"path": "images"}},
        "captioning": {"draft_model": {"path": "vlm"}, "refine_model": {"path": "llm"}},
    },
    "eval": {"unified_bench": {"folder": "UniBench/Image"}},
}


def lora_params(linears, layers: int, rank: int) -> float:
    return layers * sum(rank * (i + o) for i, o in linears)


def row(stage: str, parts: dict[str, float]) -> None:
    total = sum(parts.values())
    detail = ", ".join(f"{k} {v / GB:.1f}" for k, v in parts.items())
    print(f"{stage:<22} {total / GB:6.1f} GB   ({detail})")


def main() -> None:
    cfg = parse(resolve({"preset": "paper", **PLACEHOLDER_PATHS}))  # paths are not read here
    rl = cfg.rl
    rewards = 2 * CLIP_L * BF16 + DINO_L * BF16
    frozen_decoder = (SD35.params + VAE + PROJECTOR) * BF16
    qwen = QWEN.params * BF16

    g, tokens_2a = rl.encoder.grpo.group_size, (rl.encoder.resolution // 28) ** 2 + rl.encoder.max_new_tokens
    row(
        "rl_encoder (2a)",
        {
            "policy=ref weights": qwen,
            "LoRA+Adam": lora_params(QWEN_LINEARS, QWEN.layers, rl.encoder.lora.rank) * FP32_ADAM,
            "frozen decoder": frozen_decoder,
            "reward backbones": rewards,
            "activations (ckpt)": g * tokens_2a * QWEN.hidden * QWEN.layers * BF16,
            # the LM head reads only the caption positions (logits_to_keep)
            "fp32 caption log-probs": g * (rl.encoder.max_new_tokens + 1) * VOCAB * 4,
        },
    )

    latent_tokens = (rl.decoder.resolution // 16) ** 2  # VAE /8, patch 2
    seqs = 2 * rl.decoder.grpo.group_size  # CFG doubles the batch
    row(
        "rl_decoder (2b)",
        {
            "policy=ref DiT": SD35.params * BF16,
            "LoRA+Adam": lora_params(SD35_LINEARS, SD35.layers, rl.decoder.lora.rank) * FP32_ADAM,
            "frozen encoder": qwen,
            "VAE+projector": (VAE + PROJECTOR) * BF16,
            "reward backbones": rewards,
            "activations (ckpt)": seqs
            * (latent_tokens + cfg.models.decoder.max_text_tokens)
            * SD35.hidden
            * SD35.layers
            * BF16,
        },
    )

    pixels = rl.coldstart.resolution**2
    row(
        "rl_coldstart",
        {
            "DiT + LoRA+Adam": SD35.params * BF16
            + lora_params(SD35_LINEARS, SD35.layers, rl.coldstart.lora.rank) * FP32_ADAM,
            # hidden_states mode trains the LLM's LoRA too, through the answer tokens' states
            "LLM + LoRA+Adam": qwen
            + (
                lora_params(QWEN_LINEARS, QWEN.layers, rl.coldstart.encoder_lora.rank) * FP32_ADAM
                if rl.coldstart.mode == "hidden_states"
                else 0
            ),
            "LLM activations (ckpt)": (
                rl.coldstart.loop.micro_batch_size
                * ((rl.coldstart.resolution // 28) ** 2 + cfg.models.decoder.max_text_tokens)
                * QWEN.hidden
                * QWEN.layers
                * BF16
                if rl.coldstart.mode == "hidden_states"
                else 0
            ),
            "reward backbones": rewards,
            "DiT activations": 2
            * rl.coldstart.grad_steps
            * ((rl.coldstart.resolution // 16) ** 2 + 512)
            * SD35.hidden
            * SD35.layers
            * BF16,
            "VAE decoder grads": 512 * pixels * BF16 * 4,
        },
    )

    phase = cfg.pretrain.decoder.phases[-1]
    world = resources(cfg, "pretrain_decoder").world_size
    row(
        f"pretrain_decoder {phase.resolution}px",
        {
            f"DiT full FT, FSDP/{world}": SD35.params * (BF16 + FP32_ADAM) / world,
            "frozen encoder": qwen,
            "activations (ckpt)": phase.loop.micro_batch_size
            * ((phase.resolution // 16) ** 2 + 512)
            * SD35.hidden
            * SD35.layers
            * BF16,
        },
    )


if __name__ == "__main__":
    main()

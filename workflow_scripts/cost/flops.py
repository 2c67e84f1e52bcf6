"""Forward FLOPs of one layer of each paper-model stack, counted by ``torch.utils.flop_counter`` on the meta
device: each layer is the library's own module (transformers, diffusers, timm) built at the published
widths of :mod:`workflow_scripts.tiny.published`, run on meta tensors, so no weight is ever allocated and a
count takes milliseconds. The counter's convention is 2 FLOPs per multiply-add of every matmul, convolution
and attention product (``2*m*n*k``); elementwise work (norms, activations, softmax) is not counted.

A stack's forward is its layer's count times its published depth (``published.*``); the per-stage
arithmetic lives in :mod:`workflow_scripts.cost.project`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import cache

import torch
from torch.utils.flop_counter import FlopCounterMode

from workflow_scripts.tiny import published as P


def counted(
    build: Callable[[], torch.nn.Module], *shapes: tuple[int, ...], **kw_shapes: tuple[int, ...]
) -> int:
    """Forward FLOPs of ``build()`` on random meta inputs of the given shapes (keyword shapes are passed by
    name)."""
    with torch.device("meta"):
        module = build()
        args = [torch.empty(s) for s in shapes]
        kwargs = {k: torch.empty(s) for k, s in kw_shapes.items()}
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        module(*args, **kwargs)
    return int(counter.get_total_flops())


@cache
def linear(tokens: int, d_in: int, d_out: int) -> int:
    return counted(lambda: torch.nn.Linear(d_in, d_out, bias=False), (1, tokens, d_in))


@cache
def llm_layer(hidden: int, intermediate: int, heads: int, kv_heads: int, seq: int) -> int:
    """One Qwen2 decoder layer (grouped-query attention over ``seq`` tokens + gated MLP). Attention is
    counted over the full ``seq x seq`` square, as SDPA's math computes it (a causal kernel skips half)."""
    from transformers import Qwen2Config
    from transformers.models.qwen2.modeling_qwen2 import Qwen2DecoderLayer, Qwen2RotaryEmbedding

    config = Qwen2Config(
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        num_hidden_layers=1,
    )
    config._attn_implementation = "sdpa"
    with torch.device("meta"):
        layer = Qwen2DecoderLayer(config, 0)
        x = torch.empty(1, seq, hidden)
        rope = Qwen2RotaryEmbedding(config)
        cos_sin = rope(x, torch.arange(seq)[None])
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        layer(x, position_embeddings=cos_sin, attention_mask=None)
    return int(counter.get_total_flops())


@cache
def vit_block(width: int, mlp: int, heads: int, seq: int, windows: int = 1, gated: bool = False) -> int:
    """One pre-norm ViT block (timm's ``Block``; SwiGLU MLP when ``gated``) over ``windows`` independent
    sequences of ``seq`` tokens (window attention: the linears see every token, attention only its window)."""
    from timm.layers import Mlp, SwiGLU
    from timm.models.vision_transformer import Block

    return counted(
        lambda: Block(width, heads, mlp_ratio=mlp / width, qkv_bias=True, mlp_layer=SwiGLU if gated else Mlp),
        (windows, seq, width),
    )


@cache
def joint_block(dim: int, heads: int, head_dim: int, image: int, text: int, pre_only: bool) -> int:
    """One SD3 MM-DiT joint block (diffusers' ``JointTransformerBlock``) over ``image`` latent tokens and
    ``text`` conditioning tokens."""
    from diffusers.models.attention import JointTransformerBlock

    return counted(
        lambda: JointTransformerBlock(
            dim=dim,
            num_attention_heads=heads,
            attention_head_dim=head_dim,
            context_pre_only=pre_only,
            qk_norm=P.SD35_LARGE["transformer"]["qk_norm"],
        ),
        hidden_states=(1, image, dim),
        encoder_hidden_states=(1, text, dim),
        temb=(1, dim),
    )


@cache
def vae(resolution: int, part: str) -> int:
    """SD3.5's VAE (diffusers ``AutoencoderKL``, published config): ``part`` 'encode' (a ``resolution`` px
    image) or 'decode' (its latent)."""
    from diffusers import AutoencoderKL

    spec = {k: v for k, v in P.SD35_LARGE["vae"].items() if k != "sample_size"}
    blocks = len(spec["block_out_channels"])
    down = 2 ** (blocks - 1)
    with torch.device("meta"):
        model = AutoencoderKL(
            **spec,
            down_block_types=("DownEncoderBlock2D",) * blocks,
            up_block_types=("UpDecoderBlock2D",) * blocks,
        )
        image = torch.empty(1, 3, resolution, resolution)
        latent = torch.empty(1, spec["latent_channels"], resolution // down, resolution // down)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model.encode(image) if part == "encode" else model.decode(latent)
    return int(counter.get_total_flops())


# --- whole stacks: a layer's count x the published depth ---------------------------------------------
QWEN_TEXT = P.QWEN25_VL_3B["text"]
QWEN_VISION = P.QWEN25_VL_3B["vision"]
DIT = P.SD35_LARGE["transformer"]


def qwen_image_tokens(resolution: int) -> tuple[int, int]:
    """(vision patches, merged tokens the LLM sees) of a ``resolution``-px square image: Qwen2.5-VL's
    processor rounds each side to the nearest multiple of patch x merge (28 px)."""
    unit = QWEN_VISION["patch_size"] * QWEN_VISION["spatial_merge_size"]
    side = max(unit, round(resolution / unit) * unit) // QWEN_VISION["patch_size"]
    return side * side, side * side // QWEN_VISION["spatial_merge_size"] ** 2


def qwen_vision(resolution: int) -> int:
    """Qwen2.5-VL's vision tower on one image: window-attention blocks (112 px windows) and the published
    full-attention blocks, then the 2x2 patch merger into the LLM width."""
    spec = QWEN_VISION
    patches, tokens = qwen_image_tokens(resolution)
    side = math.isqrt(patches)
    per_window = spec["window_size"] // spec["patch_size"]
    windows = math.ceil(side / per_window) ** 2
    width, mlp, heads = spec["hidden_size"], spec["intermediate_size"], spec["num_heads"]
    full = len(spec["fullatt_block_indexes"])
    # windows at the border are partial; counting every window full-size over-counts attention slightly
    windowed = vit_block(width, mlp, heads, per_window * per_window, windows, gated=True)
    whole = vit_block(width, mlp, heads, patches, 1, gated=True)
    merged = width * spec["spatial_merge_size"] ** 2
    merger = linear(tokens, merged, merged) + linear(tokens, merged, spec["out_hidden_size"])
    # the windowed count covers windows * per_window^2 >= patches tokens: scale its linears back down
    windowed = windowed * patches // (windows * per_window * per_window)
    return (spec["depth"] - full) * windowed + full * whole + merger


def qwen_text(seq: int, logits: int) -> int:
    """Qwen2.5-VL-3B's LLM over ``seq`` tokens, with the vocabulary head on ``logits`` of them."""
    t = QWEN_TEXT
    layer = llm_layer(
        t["hidden_size"], t["intermediate_size"], t["num_attention_heads"], t["num_key_value_heads"], seq
    )
    return (
        t["num_hidden_layers"] * layer + linear(logits, t["hidden_size"], t["vocab_size"])
        if logits
        else (t["num_hidden_layers"] * layer)
    )


def projector(tokens: int, hidden: int, merge: int = 1) -> int:
    """The release's projector: LLM width -> ``hidden`` -> GELU -> the DiT's joint_attention_dim, on
    runs of ``merge`` concatenated states (models.decoder.projector_merge; release 1)."""
    merged = -(-tokens // merge)
    return linear(merged, merge * QWEN_TEXT["hidden_size"], hidden) + linear(
        merged, hidden, DIT["joint_attention_dim"]
    )


def dit_latent_tokens(resolution: int) -> int:
    return (resolution // 8 // DIT["patch_size"]) ** 2


def dit(resolution: int, text: int, layers: int | None = None) -> int:
    """SD3.5-large's transformer, one forward at ``resolution`` px with ``text`` conditioning tokens: its
    joint blocks (the last is context_pre_only), the context embedder, patch embedding and output head,
    and the per-sample timestep / pooled-text embedders and output modulation. ``layers``: the published
    depth unless given (a test compares a cut-depth model)."""
    image = dit_latent_tokens(resolution)
    dim = DIT["num_attention_heads"] * DIT["attention_head_dim"]
    block = joint_block(dim, DIT["num_attention_heads"], DIT["attention_head_dim"], image, text, False)
    last = joint_block(dim, DIT["num_attention_heads"], DIT["attention_head_dim"], image, text, True)
    patch = DIT["patch_size"] ** 2
    edges = (
        linear(text, DIT["joint_attention_dim"], dim)
        + linear(image, DIT["in_channels"] * patch, dim)
        + linear(image, dim, DIT["out_channels"] * patch)
    )
    # diffusers' timestep projection has 256 sinusoidal channels
    embedders = linear(1, 256, dim) + linear(1, DIT["pooled_projection_dim"], dim) + 2 * linear(1, dim, dim)
    modulation = linear(1, dim, 2 * dim)
    return ((layers or DIT["num_layers"]) - 1) * block + last + edges + embedders + modulation


def vit(spec: dict, resolution: int | None = None) -> int:
    """An open_clip / timm ViT image tower (CLIP-L/14, LongCLIP-L, DINOv2-L, DINOv3-L) on one image."""
    if "model_cfg" in spec:
        vision = spec["model_cfg"]["vision_cfg"]
        width, depth, patch = vision["width"], vision["layers"], vision["patch_size"]
        heads, size = width // 64, resolution or vision["image_size"]
    else:
        width, depth, patch = spec["embed_dim"], spec["depth"], spec["patch_size"]
        heads, size = spec["num_heads"], resolution or spec["img_size"]
    seq = (size // patch) ** 2 + 1
    return depth * vit_block(width, 4 * width, heads, seq)


def chameleon(seq: int) -> int:
    """Chameleon-7B (UniToken's LLM) over ``seq`` tokens with its vocabulary head; counted as a Qwen2 layer
    at Chameleon's widths (the same matmuls: MHA + gated MLP; its qk-norm is elementwise)."""
    c = P.CHAMELEON_7B
    layer = llm_layer(
        c["hidden_size"], c["intermediate_size"], c["num_attention_heads"], c["num_key_value_heads"], seq
    )
    return c["num_hidden_layers"] * layer + linear(seq, c["hidden_size"], c["vocab_size"])


def siglip(resolution: int | None = None) -> int:
    s = P.SIGLIP_SO400M
    seq = ((resolution or s["image_size"]) // s["patch_size"]) ** 2
    return s["num_hidden_layers"] * vit_block(
        s["hidden_size"], s["intermediate_size"], s["num_attention_heads"], seq
    )


def internvl_vision() -> int:
    """InternVL3-78B's InternViT-6B on one 448 px tile (qk-norm and layer scale are elementwise), then its
    projector from the pixel-shuffled features (4 x 3200 wide) into the LLM."""
    spec = P.INTERNVL3_78B
    vision, llm = spec["vision"], spec["text"]
    seq = (vision["image_size"] // vision["patch_size"]) ** 2 + 1
    width = vision["hidden_size"]
    block = vit_block(width, vision["intermediate_size"], vision["num_attention_heads"], seq)
    tokens = spec["image_seq_length"]
    shuffled = int(width / spec["downsample_ratio"] ** 2)
    merger = linear(tokens, shuffled, llm["hidden_size"]) + linear(
        tokens, llm["hidden_size"], llm["hidden_size"]
    )
    return vision["num_hidden_layers"] * block + merger


def large_llm(spec: dict, seq: int, logits: int) -> int:
    """A ~72B Qwen2.5-family LLM (``published.QWEN25_72B`` / ``INTERNVL3_78B`` 'text') over ``seq`` tokens,
    with its vocabulary head on ``logits`` of them."""
    t = spec["text"]
    layer = llm_layer(
        t["hidden_size"], t["intermediate_size"], t["num_attention_heads"], t["num_key_value_heads"], seq
    )
    return t["num_hidden_layers"] * layer + linear(logits, t["hidden_size"], t["vocab_size"])

"""Tiny preset models: the published architectures' library classes, built small with fixed-seed random
weights and written with ``save_pretrained`` so every later stage loads them like real checkpoints."""

from __future__ import annotations

import logging
from importlib import resources
from pathlib import Path

import numpy as np
import torch

from workflow_scripts.data import scenes
from workflow_scripts.models.config import TinyDecoderSpec, TinyEncoderSpec
from workflow_scripts.seeding import derive_seed

log = logging.getLogger(__name__)

# Qwen2.5-VL's special tokens, in the order of the released tokenizer's added tokens
QWEN_SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)


def caption_corpus(seed: int, classes, colors, textures, scenes_count: int = 2000) -> list[str]:
    """Text the tiny tokenizer is trained on: captions of the shapes world plus bundled photo descriptions."""
    rng = np.random.default_rng(derive_seed(seed, "tokenizer"))
    corpus = [
        scenes.describe(
            scenes.sample_scene(rng, classes=classes, colors=colors, textures=textures, max_objects=5)
        )
        for _ in range(scenes_count)
    ]
    try:
        import skimage.data

        from workflow_scripts.data.sources import SKIMAGE_PHOTOS, docstring

        corpus += [docstring(getattr(skimage.data, name)) for name in SKIMAGE_PHOTOS]
    except ImportError:
        pass
    return corpus


def train_bpe(corpus: list[str], vocab_size: int, special_tokens: list[str]):
    """A byte-level BPE ``tokenizers.Tokenizer`` trained on ``corpus``, special tokens first."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    core = Tokenizer(models.BPE(unk_token=None))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=special_tokens,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator(corpus, trainer)
    return core


def build_tokenizer(corpus: list[str], vocab_size: int):
    """A byte-level BPE tokenizer with Qwen2.5-VL's special tokens and chat format."""
    from transformers import Qwen2TokenizerFast

    core = train_bpe(corpus, vocab_size, list(QWEN_SPECIAL_TOKENS))
    template = resources.files("workflow_scripts.models").joinpath("assets/chat_template.jinja").read_text()
    return Qwen2TokenizerFast(
        tokenizer_object=core,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        bos_token=None,
        chat_template=template,
    )


def build_encoder(spec: TinyEncoderSpec, seed: int, corpus: list[str], out_dir: Path) -> None:
    from transformers import (
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2_5_VLProcessor,
        Qwen2VLImageProcessor,
        Qwen2VLVideoProcessor,
    )

    tokenizer = build_tokenizer(corpus, spec.vocab_size)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in QWEN_SPECIAL_TOKENS}
    side = spec.patch_size * 2  # one merged 2x2 patch group
    image_processor = Qwen2VLImageProcessor(
        patch_size=spec.patch_size,
        merge_size=2,
        temporal_patch_size=2,
        min_pixels=side * side,
        max_pixels=64 * 64,
    )
    video_processor = Qwen2VLVideoProcessor(patch_size=spec.patch_size, merge_size=2, temporal_patch_size=2)
    processor = Qwen2_5_VLProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=video_processor,
        chat_template=tokenizer.chat_template,
    )
    head_dim = spec.hidden_size // spec.num_heads
    half = head_dim // 2  # multimodal RoPE splits head_dim/2 frequencies over (t, h, w)
    mrope = [half // 4, (half - half // 4) // 2, half - half // 4 - (half - half // 4) // 2]
    config = Qwen2_5_VLConfig(
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": spec.hidden_size,
            "intermediate_size": spec.intermediate_size,
            "num_hidden_layers": spec.num_layers,
            "num_attention_heads": spec.num_heads,
            "num_key_value_heads": spec.num_kv_heads,
            "max_position_embeddings": 4096,
            "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": mrope},
            "bos_token_id": None,
            "eos_token_id": ids["<|im_end|>"],
            "pad_token_id": ids["<|endoftext|>"],
        },
        vision_config={
            "depth": spec.vision_depth,
            "hidden_size": spec.vision_hidden_size,
            "intermediate_size": 2 * spec.vision_hidden_size,
            "num_heads": spec.vision_heads,
            "patch_size": spec.patch_size,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "window_size": 4 * spec.patch_size,
            "out_hidden_size": spec.hidden_size,
            "fullatt_block_indexes": [spec.vision_depth - 1],
        },
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=True,
    )
    torch.manual_seed(derive_seed(seed, "tiny", "encoder"))
    model = Qwen2_5_VLForConditionalGeneration(config)
    model.generation_config.eos_token_id = ids["<|im_end|>"]
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    log.info("tiny encoder: %d parameters, vocab %d -> %s", model.num_parameters(), len(tokenizer), out_dir)


def _clip_tokenizer():
    from tokenizers import pre_tokenizers
    from transformers import CLIPTokenizer

    # byte-level alphabet, no merges: enough for SD3's pooled embedding of the empty prompt
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for char in alphabet:
        vocab.setdefault(char, len(vocab))
        vocab.setdefault(char + "</w>", len(vocab))
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)


def build_decoder(spec: TinyDecoderSpec, seed: int, out_dir: Path) -> None:
    from diffusers import (
        AutoencoderKL,
        FlowMatchEulerDiscreteScheduler,
        SD3Transformer2DModel,
        StableDiffusion3Pipeline,
    )
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    torch.manual_seed(derive_seed(seed, "tiny", "decoder"))
    vae_factor = 2 ** (len(spec.vae_channels) - 1)
    transformer = SD3Transformer2DModel(
        sample_size=64 // vae_factor,
        patch_size=spec.patch_size,
        in_channels=spec.latent_channels,
        out_channels=spec.latent_channels,
        num_layers=spec.num_layers,
        attention_head_dim=spec.head_dim,
        num_attention_heads=spec.num_heads,
        joint_attention_dim=spec.joint_attention_dim,
        caption_projection_dim=spec.num_heads * spec.head_dim,
        pooled_projection_dim=2 * spec.clip_projection_dim,
        pos_embed_max_size=spec.max_latent_size,
    )
    blocks = len(spec.vae_channels)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D"] * blocks,
        up_block_types=["UpDecoderBlock2D"] * blocks,
        block_out_channels=list(spec.vae_channels),
        latent_channels=spec.latent_channels,
        layers_per_block=1,
        norm_num_groups=8,
        sample_size=64,
        shift_factor=0.0,
        scaling_factor=1.0,
        use_quant_conv=False,
        use_post_quant_conv=False,
    )
    scheduler = FlowMatchEulerDiscreteScheduler(shift=spec.scheduler_shift)
    tokenizer = _clip_tokenizer()
    encoders = []
    for _ in range(2):
        encoders.append(
            CLIPTextModelWithProjection(
                CLIPTextConfig(
                    vocab_size=len(tokenizer),
                    hidden_size=spec.clip_hidden_size,
                    intermediate_size=2 * spec.clip_hidden_size,
                    num_hidden_layers=1,
                    num_attention_heads=2,
                    max_position_embeddings=77,
                    projection_dim=spec.clip_projection_dim,
                    bos_token_id=0,
                    eos_token_id=1,
                    pad_token_id=1,
                )
            )
        )
    pipe = StableDiffusion3Pipeline(
        transformer=transformer,
        vae=vae,
        scheduler=scheduler,
        text_encoder=encoders[0],
        tokenizer=tokenizer,
        text_encoder_2=encoders[1],
        tokenizer_2=tokenizer,
        text_encoder_3=None,
        tokenizer_3=None,
    )
    pipe.save_pretrained(out_dir)
    log.info(
        "tiny decoder: transformer %d, vae %d parameters -> %s",
        transformer.num_parameters(),
        sum(p.numel() for p in vae.parameters()),
        out_dir,
    )

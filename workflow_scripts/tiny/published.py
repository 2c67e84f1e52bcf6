"""Published architecture numbers of every paper-preset model, each from the config file of the repository
named beside it (``config.json`` / ``preprocessor_config.json`` / ``scheduler_config.json`` /
``tokenizer_config.json`` of the Hugging Face model repository, or the library's own registry entry).

Numbers only, never weights. :mod:`workflow_scripts.tiny.paper_shapes` builds real-shape stand-ins from
them (all widths as published, stacks cut to 1-2 layers) and the tests assert the loaded models against
them. ``DEPTH`` keeps each published depth so a reader can scale a measured layer to the real model.
"""

from __future__ import annotations

# --- Qwen2.5 tokenizer: 151,643 byte-level BPE tokens, then these added tokens in this order -------------
# source: Qwen/Qwen2.5-VL-3B-Instruct tokenizer_config.json "added_tokens_decoder" (the same in
# Qwen2.5-72B-Instruct and Qwen2.5-VL-72B-Instruct)
QWEN_BASE_VOCAB = 151643
QWEN_ADDED_TOKENS = (
    "<|endoftext|>",  # 151643
    "<|im_start|>",  # 151644
    "<|im_end|>",  # 151645
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",  # 151652
    "<|vision_end|>",  # 151653
    "<|vision_pad|>",  # 151654
    "<|image_pad|>",  # 151655
    "<|video_pad|>",  # 151656
    "<tool_call>",
    "</tool_call>",
    "<|fim_prefix|>",
    "<|fim_middle|>",
    "<|fim_suffix|>",
    "<|fim_pad|>",
    "<|repo_name|>",
    "<|file_sep|>",  # 151664
)
# added but not special (tool-call and FIM markers): decoding with skip_special_tokens keeps them
QWEN_NON_SPECIAL = ("<tool_call>", "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>",
                    "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>")  # fmt: skip
QWEN_MODEL_MAX_LENGTH = 131072

# --- Qwen/Qwen2.5-VL-3B-Instruct config.json + preprocessor_config.json ---------------------------------
QWEN25_VL_3B = {
    "source": "Qwen/Qwen2.5-VL-3B-Instruct",
    "text": {
        "vocab_size": 151936,
        "hidden_size": 2048,
        "intermediate_size": 11008,
        "num_hidden_layers": 36,
        "num_attention_heads": 16,
        "num_key_value_heads": 2,
        "max_position_embeddings": 128000,
        "rms_norm_eps": 1e-6,
        "rope_theta": 1000000.0,
        "mrope_section": [16, 24, 24],
        "sliding_window": 32768,
        "max_window_layers": 70,
        "tie_word_embeddings": True,
    },
    "vision": {
        "depth": 32,
        "hidden_size": 1280,
        "intermediate_size": 3420,
        "num_heads": 16,
        "out_hidden_size": 2048,
        "patch_size": 14,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
        "window_size": 112,
        "fullatt_block_indexes": [7, 15, 23, 31],
        "tokens_per_second": 2,
    },
    "ids": {
        "bos_token_id": 151643,
        "eos_token_id": 151645,
        "pad_token_id": 151643,  # generation_config.json pads with <|endoftext|>
        "vision_start_token_id": 151652,
        "vision_end_token_id": 151653,
        "vision_token_id": 151654,
        "image_token_id": 151655,
        "video_token_id": 151656,
    },
    "processor": {
        "min_pixels": 3136,
        "max_pixels": 12845056,
        "patch_size": 14,
        "merge_size": 2,
        "temporal_patch_size": 2,
        "image_mean": [0.48145466, 0.4578275, 0.40821073],
        "image_std": [0.26862954, 0.26130258, 0.27577711],
    },
}

# --- Qwen/Qwen2.5-VL-72B-Instruct config.json (same vision tower family, 8192-wide LLM) ------------------
QWEN25_VL_72B = {
    "source": "Qwen/Qwen2.5-VL-72B-Instruct",
    "text": {
        "vocab_size": 152064,
        "hidden_size": 8192,
        "intermediate_size": 29568,
        "num_hidden_layers": 80,
        "num_attention_heads": 64,
        "num_key_value_heads": 8,
        "max_position_embeddings": 128000,
        "rms_norm_eps": 1e-6,
        "rope_theta": 1000000.0,
        "mrope_section": [16, 24, 24],
        "sliding_window": 32768,
        "max_window_layers": 80,
        "tie_word_embeddings": False,
    },
    "vision": {
        "depth": 32,
        "hidden_size": 1280,
        "intermediate_size": 3456,
        "num_heads": 16,
        "out_hidden_size": 8192,
        "patch_size": 14,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
        "window_size": 112,
        "fullatt_block_indexes": [7, 15, 23, 31],
        "tokens_per_second": 2,
    },
    "ids": QWEN25_VL_3B["ids"],
    "processor": QWEN25_VL_3B["processor"],
}

# --- Qwen/Qwen2.5-72B-Instruct config.json (Qwen2ForCausalLM) --------------------------------------------
QWEN25_72B = {
    "source": "Qwen/Qwen2.5-72B-Instruct",
    "text": {
        "vocab_size": 152064,
        "hidden_size": 8192,
        "intermediate_size": 29568,
        "num_hidden_layers": 80,
        "num_attention_heads": 64,
        "num_key_value_heads": 8,
        "max_position_embeddings": 32768,
        "rms_norm_eps": 1e-6,
        "rope_theta": 1000000.0,
        "sliding_window": 131072,
        "max_window_layers": 80,
        "tie_word_embeddings": False,
    },
    "ids": {"bos_token_id": 151643, "eos_token_id": 151645, "pad_token_id": 151643},
}

# --- OpenGVLab/InternVL3-78B-hf config.json (transformers' InternVL layout: InternViT-6B-448px-V2.5 +
# Qwen2.5-72B; the non -hf repository needs trust_remote_code, which our loaders never pass) --------------
INTERNVL3_78B = {
    "source": "OpenGVLab/InternVL3-78B-hf",
    "text": {
        "vocab_size": 151674,
        "hidden_size": 8192,
        "intermediate_size": 29568,
        "num_hidden_layers": 80,
        "num_attention_heads": 64,
        "num_key_value_heads": 8,
        "max_position_embeddings": 32768,
        "rms_norm_eps": 1e-6,
        "rope_theta": 1000000.0,
        "tie_word_embeddings": False,
    },
    "vision": {
        "hidden_size": 3200,
        "intermediate_size": 12800,
        "num_hidden_layers": 45,
        "num_attention_heads": 25,
        "image_size": 448,
        "patch_size": 14,
        "use_qk_norm": True,
        "norm_type": "rms_norm",
        "layer_scale_init_value": 0.1,
        "hidden_act": "gelu",
    },
    "downsample_ratio": 0.5,
    "image_seq_length": 256,
    "projector_hidden_act": "gelu",
    "vision_feature_layer": -1,
    # InternVL's own tokens follow Qwen2.5's 22 added tokens (tokenizer_config.json)
    "added_tokens": (
        "<img>",
        "</img>",
        "<IMG_CONTEXT>",
        "<quad>",
        "</quad>",
        "<ref>",
        "</ref>",
        "<box>",
        "</box>",
    ),
    "image_token_id": 151667,
    "processor": {"size": 448, "max_patches": 12, "min_patches": 1, "crop_to_patches": False},
}

# --- stabilityai/stable-diffusion-3.5-large -----------------------------------------------------------
SD35_LARGE = {
    "source": "stabilityai/stable-diffusion-3.5-large",
    # transformer/config.json
    "transformer": {
        "sample_size": 128,
        "patch_size": 2,
        "in_channels": 16,
        "out_channels": 16,
        "num_layers": 38,
        "attention_head_dim": 64,
        "num_attention_heads": 38,
        "joint_attention_dim": 4096,
        "caption_projection_dim": 2432,
        "pooled_projection_dim": 2048,
        "pos_embed_max_size": 192,
        "qk_norm": "rms_norm",
        "dual_attention_layers": [],
    },
    # vae/config.json
    "vae": {
        "in_channels": 3,
        "out_channels": 3,
        "block_out_channels": [128, 256, 512, 512],
        "layers_per_block": 2,
        "latent_channels": 16,
        "norm_num_groups": 32,
        "act_fn": "silu",
        "sample_size": 1024,
        "scaling_factor": 1.5305,
        "shift_factor": 0.0609,
        "force_upcast": True,
        "use_quant_conv": False,
        "use_post_quant_conv": False,
    },
    # scheduler/scheduler_config.json
    "scheduler": {"num_train_timesteps": 1000, "shift": 3.0},
    # text_encoder/config.json: OpenAI CLIP ViT-L/14 text tower (CLIPTextModelWithProjection)
    "text_encoder": {
        "vocab_size": 49408,
        "hidden_size": 768,
        "intermediate_size": 3072,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
        "projection_dim": 768,
        "max_position_embeddings": 77,
        "hidden_act": "quick_gelu",
        "bos_token_id": 0,
        "eos_token_id": 2,
        "pad_token_id": 1,
    },
    # text_encoder_2/config.json: OpenCLIP ViT-bigG/14 text tower (CLIPTextModelWithProjection)
    "text_encoder_2": {
        "vocab_size": 49408,
        "hidden_size": 1280,
        "intermediate_size": 5120,
        "num_hidden_layers": 32,
        "num_attention_heads": 20,
        "projection_dim": 1280,
        "max_position_embeddings": 77,
        "hidden_act": "gelu",
        "bos_token_id": 0,
        "eos_token_id": 2,
        "pad_token_id": 1,
    },
    # tokenizer/ and tokenizer_2/: CLIP BPE, 49,406 tokens then <|startoftext|> 49406, <|endoftext|> 49407;
    # tokenizer_2 pads with "!" (id 0), tokenizer with <|endoftext|>
    "clip_tokenizer": {"base_vocab": 49406, "model_max_length": 77, "pad_2": "!"},
}

# --- open_clip: OpenAI CLIP ViT-L/14 (open_clip's "ViT-L-14-quickgelu", pretrained "openai") ----------
CLIP_L14 = {
    "source": "openai/clip-vit-large-patch14 (open_clip ViT-L-14-quickgelu / openai)",
    "model_cfg": {
        "embed_dim": 768,
        "quick_gelu": True,
        "vision_cfg": {"image_size": 224, "layers": 24, "width": 1024, "patch_size": 14},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 768, "heads": 12, "layers": 12},
    },
    "preprocess_cfg": {
        "mean": [0.48145466, 0.4578275, 0.40821073],
        "std": [0.26862954, 0.26130258, 0.27577711],
        "interpolation": "bicubic",
        "resize_mode": "shortest",
    },
}
# --- LongCLIP-L (BeichenZhang/LongCLIP-L): CLIP ViT-L/14 with 248 text positions --------------------------
LONGCLIP_L = {
    "source": "BeichenZhang/LongCLIP-L",
    "model_cfg": {
        **CLIP_L14["model_cfg"],
        "text_cfg": {**CLIP_L14["model_cfg"]["text_cfg"], "context_length": 248},
    },
    "preprocess_cfg": CLIP_L14["preprocess_cfg"],
}

# --- timm DINOv2 / DINOv3 ViT-L (timm's registry = the hub repositories' config.json) ----------------------
DINOV2_L = {
    "source": "timm/vit_large_patch14_dinov2.lvd142m",
    "architecture": "vit_large_patch14_dinov2.lvd142m",
    "embed_dim": 1024,
    "depth": 24,
    "num_heads": 16,
    "patch_size": 14,
    "img_size": 518,
}
DINOV3_L = {
    "source": "timm/vit_large_patch16_dinov3.lvd1689m",
    "architecture": "vit_large_patch16_dinov3.lvd1689m",
    "embed_dim": 1024,
    "depth": 24,
    "num_heads": 16,
    "patch_size": 16,
    "img_size": 256,
}

# --- facebook/mask2former-swin-small-coco-instance config.json + preprocessor_config.json ---------------
MASK2FORMER_SWIN_S_COCO = {
    "source": "facebook/mask2former-swin-small-coco-instance",
    "backbone": {
        "embed_dim": 96,
        "depths": [2, 2, 18, 2],
        "num_heads": [3, 6, 12, 24],
        "window_size": 7,
        "image_size": 224,
        "patch_size": 4,
        "mlp_ratio": 4.0,
        "drop_path_rate": 0.3,
        "out_features": ["stage1", "stage2", "stage3", "stage4"],
    },
    "hidden_dim": 256,
    "feature_size": 256,
    "mask_feature_size": 256,
    "num_queries": 100,
    "encoder_layers": 6,
    "decoder_layers": 10,
    "encoder_feedforward_dim": 1024,
    "dim_feedforward": 2048,
    "num_attention_heads": 8,
    "num_labels": 80,
    # not read from the hub file here (no copy in the search corpus): MaskFormer's processor default
    # resize (shortest edge 384 at most 1333, padded to a multiple of 32) - check against the download
    "processor": {
        "size": {"shortest_edge": 384, "longest_edge": 1333},
        "size_divisor": 32,
        "image_mean": [0.485, 0.456, 0.406],
        "image_std": [0.229, 0.224, 0.225],
        "ignore_index": 255,
    },
}
# detectron2's COCO thing names (Mask2Former id2label order, ids 0-79)
COCO_THINGS = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee",
    "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard",
    "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase",
    "scissors", "teddy bear", "hair drier", "toothbrush",
)  # fmt: skip

# --- UniToken: Alpha-VLLM/Lumina-mGPT-7B-512 (transformers' Chameleon layout) + siglip-so400m ----------
CHAMELEON_7B = {
    "source": "Alpha-VLLM/Lumina-mGPT-7B-512 (Chameleon-7B)",
    "vocab_size": 65536,
    "hidden_size": 4096,
    "intermediate_size": 11008,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 32,
    "max_position_embeddings": 4096,
    "rms_norm_eps": 1e-5,
    "rope_theta": 10000.0,
    "qk_layernorm": True,
    "swin_norm": False,
    "tie_word_embeddings": False,
    # image codes are tokens 4..8195 (names IMGIMG<digits as A-J>Z); the ids of <s>/<pad>/</s>/<unk>
    # (0..3 here) and of the other named tokens were not read from the released tokenizer
    "first_code_id": 4,
    # vq_config (Chameleon's released vqgan.yaml)
    "vq": {
        "embed_dim": 256,
        "num_embeddings": 8192,
        "latent_channels": 256,
        "resolution": 512,
        "in_channels": 3,
        "base_channels": 128,
        "channel_multiplier": [1, 1, 2, 2, 4],
        "num_res_blocks": 2,
        "attn_resolutions": [],
        "double_latent": False,
    },
}
SIGLIP_SO400M = {
    "source": "google/siglip-so400m-patch14-384 (vision_config)",
    "hidden_size": 1152,
    "intermediate_size": 4304,
    "num_hidden_layers": 27,
    "num_attention_heads": 16,
    "image_size": 384,
    "patch_size": 14,
}

"""Convert a released UniToken or Lumina-mGPT checkpoint directory to ours.

    python -m workflow_scripts.unitoken.convert SRC DST [--vision SIGLIP_DIR] [--tokenizer DIR] [--vq DIR]

SRC is the directory the release publishes (OceanJay/UniToken-*, Alpha-VLLM/Lumina-mGPT-7B-*): a
``config.json`` (``ChameleonXLLMXConfig``) and ``*.safetensors`` shards (with their index) holding
``model.*`` and ``lm_head.*`` (Lumina-mGPT's Chameleon), and for UniToken also ``vit.*`` (the SigLIP
tower, ``AutoModel(siglip).vision_model``) and ``adapter.*``.

- Lumina-mGPT (no ``vit.*``): DST becomes a transformers ``ChameleonForConditionalGeneration``
  directory with its tokenizer: the ``unitoken.models.lm`` input.
- UniToken: DST becomes a model directory ``UniToken.from_pretrained`` loads (``lm/``, ``vision/``,
  ``adapter.safetensors``, ``unitoken.json``); ``--vision`` names a SigLIP directory for the tower's
  config (the release builds its tower from ``./ckpts/SigLIP`` and stores only the weights).

The one shape that differs: Lumina-mGPT's Chameleon keeps the q/k LayerNorm affine per model-parallel
shard, ``[model_parallel_size, head_dim]``, repeat-interleaved over each shard's heads at run time;
transformers keeps it per head, ``[heads, head_dim]``. The converter repeat-interleaves once.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import (
    AutoTokenizer,
    ChameleonConfig,
    ChameleonForConditionalGeneration,
    SiglipVisionConfig,
    SiglipVisionModel,
)

from workflow_scripts.unitoken.model import ADAPTER_FILE, Adapter, UniToken
from workflow_scripts.unitoken.sequence import GRID_TOKENS, Layout, TokenIds, grid_token_name

log = logging.getLogger(__name__)

# config.json keys only the release's own classes know
RELEASE_ONLY_CONFIG = ("architectures", "auto_map", "z_loss_weight", "mask_image_logits")
QK_NORM = re.compile(r"model\.layers\.\d+\.self_attn\.(q|k)_norm\.(weight|bias)$")


def read_released_weights(src: Path) -> dict[str, torch.Tensor]:
    """Every tensor of the release's safetensors files (sharded with an index, or one file)."""
    index = src / "model.safetensors.index.json"
    if index.exists():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    else:
        files = sorted(p.name for p in src.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(
            f"{src}: no *.safetensors weights; expected the released UniToken / Lumina-mGPT directory "
            "(config.json + model-*.safetensors)"
        )
    weights: dict[str, torch.Tensor] = {}
    for name in files:
        with safe_open(src / name, framework="pt") as shard:
            for key in shard.keys():  # noqa: SIM118 - safe_open has no __iter__
                weights[key] = shard.get_tensor(key)
    return weights


def chameleon_config(src: Path, tokenizer) -> ChameleonConfig:
    raw = json.loads((src / "config.json").read_text())
    for key in RELEASE_ONLY_CONFIG:
        raw.pop(key, None)
    raw.pop("model_type", None)
    if not raw.get("vocabulary_map"):  # the image-code names are the tokenizer's own
        raw["vocabulary_map"] = tokenizer.get_vocab()
    return ChameleonConfig(**raw)


def per_head_norm(weight: torch.Tensor, heads: int, key: str) -> torch.Tensor:
    """[shards, head_dim] (each shard's affine shared by its heads) -> [heads, head_dim]."""
    if weight.shape[0] == heads:
        return weight  # already per head
    if weight.ndim != 2 or heads % weight.shape[0]:
        raise ValueError(f"{key}: shape {tuple(weight.shape)} is neither per head ({heads}) nor per shard")
    return weight.repeat_interleave(heads // weight.shape[0], dim=0)


def lm_state_dict(weights: dict[str, torch.Tensor], config: ChameleonConfig) -> dict[str, torch.Tensor]:
    state = {}
    heads = {"q": config.num_attention_heads, "k": config.num_key_value_heads}
    for key, value in weights.items():
        if not key.startswith(("model.", "lm_head.")) or key.endswith("rotary_emb.inv_freq"):
            continue
        match = QK_NORM.search(key)
        state[key] = per_head_norm(value, heads[match.group(1)], key) if match else value
    return state


def check_vocabulary(tokenizer) -> None:
    """The released layout's markers and grid-size tokens are in the vocabulary (else: a clear error)."""
    TokenIds.of(tokenizer)
    for grids in GRID_TOKENS:
        if tokenizer.convert_tokens_to_ids(grid_token_name(grids)) in (None, tokenizer.unk_token_id):
            raise ValueError(f"the tokenizer lacks the grid-size token {grid_token_name(grids)}")


def _load_exactly(module: torch.nn.Module, state: dict[str, torch.Tensor], what: str) -> None:
    missing, unexpected = module.load_state_dict(state, strict=False, assign=True)
    if missing or unexpected:
        raise ValueError(f"{what}: missing {sorted(missing)[:8]}, unexpected {sorted(unexpected)[:8]}")


def build_lm(
    weights: dict[str, torch.Tensor], config: ChameleonConfig, vq: Path | None
) -> ChameleonForConditionalGeneration:
    state = lm_state_dict(weights, config)
    if not any(k.startswith("model.vqmodel.") for k in state):
        if vq is None:
            raise ValueError(
                "the checkpoint has no VQ encoder (model.vqmodel.*): pass --vq <dir> of the Chameleon "
                "tokenizer converted with `python -m workflow_scripts.unitoken.vq`"
            )
        from workflow_scripts.unitoken.vq import VQTokenizer

        vqvae = VQTokenizer.from_pretrained(vq).vqvae.state_dict()
        state.update({f"model.vqmodel.{k}": v for k, v in vqvae.items()})
    with torch.device("meta"):
        lm = ChameleonForConditionalGeneration(config)
    _load_exactly(lm, state, "LM weights")
    return lm


def build_vision(weights: dict[str, torch.Tensor], vision_dir: Path) -> SiglipVisionModel:
    config = SiglipVisionConfig.from_pretrained(vision_dir)
    with torch.device("meta"):
        vision = SiglipVisionModel(config)
    tower = getattr(vision, "vision_model", vision)
    state = {k.removeprefix("vit."): v for k, v in weights.items() if k.startswith("vit.")}
    _load_exactly(tower, state, f"vit.* against the SigLIP config of {vision_dir}")
    return vision


def convert(
    src: Path | str,
    dst: Path | str,
    *,
    vision: Path | str | None = None,
    tokenizer: Path | str | None = None,
    vq: Path | str | None = None,
) -> str:
    """Write DST from SRC; returns what it wrote ("lm" or "unitoken")."""
    src, dst = Path(src), Path(dst)
    if not (src / "config.json").exists():
        raise FileNotFoundError(f"{src}/config.json missing: not a released checkpoint directory")
    text_tokenizer = AutoTokenizer.from_pretrained(Path(tokenizer) if tokenizer else src)
    weights = read_released_weights(src)
    stray = sorted(k for k in weights if not k.startswith(("model.", "lm_head.", "vit.", "adapter.")))
    if stray:
        raise ValueError(f"{src}: weights this converter does not know: {stray[:8]}")
    config = chameleon_config(src, text_tokenizer)
    lm = build_lm(weights, config, Path(vq) if vq else None)
    unitoken = any(k.startswith(("vit.", "adapter.")) for k in weights)
    if unitoken and vision is None:
        raise ValueError(f"{src} is a UniToken checkpoint (vit.* weights): pass --vision <SigLIP dir>")

    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", dir=dst.parent))
    try:
        lm_dir = tmp / "lm" if unitoken else tmp
        lm.save_pretrained(lm_dir)
        text_tokenizer.save_pretrained(lm_dir)
        if unitoken:
            tower = build_vision(weights, Path(vision))
            tower.save_pretrained(tmp / "vision")
            adapter_state = {
                k.removeprefix("adapter."): v for k, v in weights.items() if k.startswith("adapter.")
            }
            adapter = Adapter(tower.config.hidden_size, config.hidden_size)
            _load_exactly(adapter, adapter_state, "adapter.*")
            save_file({k: v.contiguous() for k, v in adapter_state.items()}, tmp / ADAPTER_FILE)
            layout = Layout.from_dirs(tmp / "lm", tmp / "vision")
            UniToken.write_meta(layout, tmp)
        else:
            check_vocabulary(text_tokenizer)
        if dst.exists():
            shutil.rmtree(dst)
        tmp.rename(dst)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    kind = "unitoken" if unitoken else "lm"
    log.info("wrote %s (%s) from %s", dst, kind, src)
    return kind


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("src", type=Path, help="released UniToken / Lumina-mGPT checkpoint directory")
    parser.add_argument("dst", type=Path, help="output directory")
    parser.add_argument("--vision", type=Path, help="SigLIP directory (config of the UniToken tower)")
    parser.add_argument("--tokenizer", type=Path, help="tokenizer directory if SRC has none")
    parser.add_argument("--vq", type=Path, help="our VQ tokenizer directory if SRC has no model.vqmodel.*")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    kind = convert(args.src, args.dst, vision=args.vision, tokenizer=args.tokenizer, vq=args.vq)
    print(f"{args.dst}: {'UniToken model directory' if kind == 'unitoken' else 'Chameleon LM directory'}")


if __name__ == "__main__":
    main()

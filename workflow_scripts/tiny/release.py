"""Write a UAE release checkpoint directory (models/release.py's layout) from tiny models.

Made from a tiny encoder and a tiny SD3 directory (tiny/uae.py) with fixed-seed random adapters, so
tests and users can exercise ``eval.systems.<name>: {kind: uae-release, path: ...}`` on a CPU::

    python -m workflow_scripts.tiny.release OUT_DIR ENCODER_DIR SD3_DIR [--seed N]
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from workflow_scripts import atomic
from workflow_scripts.models.decoder import CaptionProjector
from workflow_scripts.models.release import LLM_LORA, LLM_LORA_SHARDS, PROJECTOR_PREFIX

DIT_LORA = {"r": 4, "lora_alpha": 8, "target_modules": ["to_q", "to_k", "to_v", "to_out.0"]}


def _nonzero_lora(module: torch.nn.Module, generator: torch.Generator, scale: float) -> None:
    """LoRA B starts at zero (a no-op adapter): give every B weights, so a test sees whether it is loaded."""
    with torch.no_grad():
        for name, param in module.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * scale)


def write_release(
    out_dir: Path, encoder_dir: Path, sd3_dir: Path, *, seed: int = 0, projector_hidden: int = 64
) -> Path:
    """A release directory at ``out_dir`` (written atomically) from a tiny encoder and SD3 directory."""
    from diffusers import SD3Transformer2DModel
    from peft import LoraConfig, get_peft_model
    from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration

    generator = torch.Generator().manual_seed(seed)
    with atomic.directory(out_dir) as tmp:
        # llm: the Qwen weights with the projector saved next to them, as the release's subclass saves it
        qwen = Qwen2_5_VLForConditionalGeneration.from_pretrained(encoder_dir)
        transformer = SD3Transformer2DModel.from_pretrained(Path(sd3_dir) / "transformer")
        torch.manual_seed(seed)
        projector = CaptionProjector(
            in_features=qwen.config.text_config.hidden_size,
            hidden_features=projector_hidden,
            out_features=transformer.config.joint_attention_dim,
        )
        qwen.save_pretrained(tmp / "llm")
        (weights,) = (tmp / "llm").glob("*.safetensors")  # tiny: one file
        state = load_file(weights)
        state.update({PROJECTOR_PREFIX + k: v.contiguous() for k, v in projector.net.state_dict().items()})
        save_file(state, weights, metadata={"format": "pt"})
        config = json.loads((tmp / "llm" / "config.json").read_text())
        config["architectures"] = ["Qwen2_5_VLWithLongContext"]
        (tmp / "llm" / "config.json").write_text(json.dumps(config, indent=2))

        # llm_lora: the adapter attached to the inner model, its tensors keyed in the whole module, 3 shards
        qwen.model = get_peft_model(qwen.model, LoraConfig(**LLM_LORA))
        _nonzero_lora(qwen, generator, 0.05)
        lora = {f"model.{k}": v.contiguous() for k, v in qwen.model.state_dict().items() if "lora_" in k}
        names = sorted(lora)
        (tmp / "llm_lora").mkdir()
        for i, shard in enumerate(LLM_LORA_SHARDS):
            part = names[i :: len(LLM_LORA_SHARDS)]
            save_file({k: lora[k] for k in part}, tmp / "llm_lora" / shard, metadata={"format": "pt"})

        AutoProcessor.from_pretrained(encoder_dir).save_pretrained(tmp / "llm_model_preprocessor")

        # dit + dit_lora: a full DiT and a peft adapter saved over it
        transformer.save_pretrained(tmp / "dit")
        adapted = get_peft_model(transformer, LoraConfig(**DIT_LORA, init_lora_weights="gaussian"))
        _nonzero_lora(adapted, generator, 0.05)
        adapted.save_pretrained(tmp / "dit_lora")

        shutil.copytree(sd3_dir, tmp / "SD3_model")
    return Path(out_dir)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("encoder_dir", type=Path, help="a tiny encoder (Qwen2.5-VL directory)")
    parser.add_argument("sd3_dir", type=Path, help="a tiny SD3 diffusers directory")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(write_release(args.out_dir, args.encoder_dir, args.sd3_dir, seed=args.seed))


if __name__ == "__main__":
    main()

"""A UAE release checkpoint directory (PKU-YuanGroup/UAE ``Checkpoints/``) loaded as our encoder + decoder.

Layout (``../shared/reference/uae-release.md``)::

    llm/                     Qwen2.5-VL weights + the projector (projector.0 / projector.2 in its state dict)
    llm_lora/                model-0000{1,2,3}-of-00003.safetensors: loaded over the LLM after a LoRA
                             (r 32, alpha 64, all linear layers, gaussian init) is attached to its inner model
    llm_model_preprocessor/  the Qwen2.5-VL processor
    dit/                     SD3Transformer2DModel
    dit_lora/                a peft adapter over that DiT
    SD3_model/               the stock SD3.5 pipeline directory (VAE, scheduler, CLIP text encoders)

One LLM does both jobs: the LoRA-adapted Qwen writes captions and its hidden states condition the DiT
(``release`` conditioning, the release's negative prompt). Adapters stay unmerged, as the release runs them.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from workflow_scripts.config.typed import ConfigError

if TYPE_CHECKING:  # the layout check runs at plan time, without torch
    import torch

    from workflow_scripts.models.conditioning import ConditioningSpec
    from workflow_scripts.models.decoder import CaptionProjector, Decoder
    from workflow_scripts.models.encoder import CaptionPrompt, Encoder

log = logging.getLogger(__name__)

NEGATIVE_PROMPT = "Generate a random, low quality, ugly, blur, bad and anime, cartoon image."
ROLE = "generate"
LLM_LORA_SHARDS = tuple(f"model-0000{i}-of-00003.safetensors" for i in (1, 2, 3))
LLM_LORA = {"r": 32, "lora_alpha": 64, "target_modules": "all-linear", "init_lora_weights": "gaussian"}
PROJECTOR_PREFIX = "projector."

# folder -> (files it must hold, what it is)
LAYOUT = {
    "llm": (("config.json",), "the Qwen2.5-VL weights with the projector (projector.0, projector.2)"),
    "llm_lora": (LLM_LORA_SHARDS, "the LLM's LoRA weights in three safetensors shards"),
    "llm_model_preprocessor": (("tokenizer_config.json",), "the Qwen2.5-VL processor"),
    "dit": (("config.json",), "the fine-tuned SD3Transformer2DModel"),
    "dit_lora": (("adapter_config.json",), "the DiT's peft adapter"),
    "SD3_model": (
        ("model_index.json", "vae/config.json", "scheduler", "text_encoder", "text_encoder_2"),
        "the stock SD3.5 pipeline directory",
    ),
}


def check_layout(root: str | Path | None, key: str) -> Path:
    """``root`` if it is a release directory, else a ConfigError naming the config key, the folder and
    the fix."""
    if not root:
        raise ConfigError(f"config key '{key}' is not set: point it at a UAE release Checkpoints/ directory")
    root = Path(root).expanduser()
    hint = (
        f"config key '{key}' must point at a UAE release checkpoint directory holding "
        + ", ".join(LAYOUT)
        + " (the release's Checkpoints/ folder)"
    )
    if not root.is_dir():
        raise ConfigError(f"{root} does not exist: {hint}")
    for folder, (files, what) in LAYOUT.items():
        if not (root / folder).is_dir():
            raise ConfigError(f"{root}: folder '{folder}' ({what}) is missing: {hint}")
        missing = [f for f in files if not (root / folder / f).exists()]
        if folder == "llm_lora":
            shards = sorted(p.name for p in (root / folder).glob("*.safetensors"))
            if missing or len(shards) != len(LLM_LORA_SHARDS):
                raise ConfigError(
                    f"{root / folder}: holds {len(shards)} safetensors shard(s) "
                    f"({', '.join(shards) or 'none'}); "
                    f"the release's LLM LoRA is exactly the three shards {', '.join(LLM_LORA_SHARDS)}: copy "
                    "the release's llm_lora folder unchanged"
                )
        elif missing:
            raise ConfigError(f"{root / folder}: missing {', '.join(missing)} ({what}): {hint}")
    if not list((root / "llm").glob("*.safetensors")):
        raise ConfigError(f"{root / 'llm'}: no safetensors weights (LLM + projector): {hint}")
    return root


@dataclass
class Release:
    encoder: Encoder  # the LoRA-adapted LLM: captioner and reader
    decoder: Decoder  # DiT + its adapter, SD3's VAE and scheduler, the release projector
    path: Path

    @property
    def conditioning(self) -> ConditioningSpec:
        from workflow_scripts.models.conditioning import ConditioningSpec

        return ConditioningSpec(mode="release", role=ROLE, negative=NEGATIVE_PROMPT, max_tokens=0)

    @staticmethod
    def caption_prompt(sampling) -> CaptionPrompt:
        """The release asks with the instruction text first, then the image (``inference.caption``'s
        instruction: the paper preset holds the release's string)."""
        from workflow_scripts.models.encoder import CaptionPrompt

        return CaptionPrompt(sampling.instruction, instruction_first=True)

    def to(self, device) -> Release:
        self.encoder.model.to(device).eval()
        for part in (self.decoder.transformer, self.decoder.vae, self.decoder.projector):
            part.to(device).eval()
        return self


def _llm_state(folder: Path, prefix: str) -> dict[str, torch.Tensor]:
    from safetensors import safe_open

    state = {}
    for file in sorted(folder.glob("*.safetensors")):
        with safe_open(file, framework="pt") as handle:
            for name in handle.keys():  # noqa: SIM118 (safe_open is no mapping)
                if name.startswith(prefix):
                    state[name] = handle.get_tensor(name)
    return state


def release_projector(state: dict[str, torch.Tensor], folder: Path) -> CaptionProjector:
    """Our CaptionProjector holding the release's ``projector.0`` / ``projector.2`` (Linear, GELU, Linear)."""
    from workflow_scripts.models.decoder import CaptionProjector

    names = ("projector.0.weight", "projector.0.bias", "projector.2.weight", "projector.2.bias")
    missing = [n for n in names if n not in state]
    if missing:
        raise ConfigError(
            f"{folder}: the LLM weights hold no release projector ({', '.join(missing)} missing): a release "
            "llm folder stores Linear -> GELU -> Linear as projector.0 / projector.2 next to the Qwen weights"
        )
    hidden, width = state["projector.0.weight"].shape
    projector = CaptionProjector(
        in_features=width, hidden_features=hidden, out_features=state["projector.2.weight"].shape[0]
    )
    projector.net.load_state_dict({k.removeprefix(PROJECTOR_PREFIX): state[k] for k in names})
    return projector


def _composite(qwen, projector: CaptionProjector):
    """The release's LLM module as one state-dict namespace: ``model.*`` (the Qwen inner model, LoRA
    attached), ``lm_head.*``, ``projector.*``; the llm_lora shards are keyed in it."""
    import torch

    module = torch.nn.Module()
    module.model = qwen.model
    module.lm_head = qwen.lm_head
    module.projector = projector.net
    return module


_INNER = "model.base_model.model."  # the inner Qwen model under the peft wrapper
_LEGACY = (
    # transformers < 4.52 kept the text model at `model.` and the vision tower at `visual.`
    (re.compile(r"^model\.base_model\.model\.(?!language_model\.|visual\.)"), _INNER + "language_model."),
    (re.compile(r"^visual\."), _INNER + "visual."),
    (re.compile(r"^model\.(?!base_model\.|language_model\.|visual\.)"), _INNER + "language_model."),
    (re.compile(r"^model\.(language_model|visual)\."), r"model.base_model.model.\1."),
)


def _target_key(name: str, targets: set[str]) -> str | None:
    """Where a shard key lands in our module: as is, in the current transformers layout, or under the
    LoRA wrapper's ``base_layer`` (a full state dict saved with the adapter attached)."""
    candidates = [name]
    for pattern, replacement in _LEGACY:
        if pattern.search(name):
            candidates.append(pattern.sub(replacement, name))
    for candidate in list(candidates):
        head, _, leaf = candidate.rpartition(".")
        candidates.append(f"{head}.base_layer.{leaf}")
        # peft's adapter-only state dicts drop the adapter name
        candidates.append(re.sub(r"\.(lora_[AB])\.(?!default\.)", r".\1.default.", candidate))
    return next((c for c in candidates if c in targets), None)


def attach_llm_lora(qwen, projector: CaptionProjector, folder: Path) -> None:
    """Attach the release's LoRA to the inner model and load the shards into the whole module.

    The release loads them with ``strict=False``; here a shard key that lands nowhere is an error (a
    silently ignored adapter would evaluate the base model), while module keys the shards do not hold
    keep their values (LoRA B starts at zero, so an absent adapter changes nothing).
    """
    from peft import LoraConfig, get_peft_model
    from safetensors.torch import load_file

    qwen.model = get_peft_model(qwen.model, LoraConfig(**LLM_LORA))
    composite = _composite(qwen, projector)
    targets = set(composite.state_dict())
    state, unplaced = {}, []
    for shard in LLM_LORA_SHARDS:
        for name, tensor in load_file(folder / shard).items():
            target = _target_key(name, targets)
            if target is None:
                unplaced.append(name)
            else:
                state[target] = tensor
    if unplaced:
        raise ConfigError(
            f"{folder}: {len(unplaced)} key(s) of the llm_lora shards match no parameter of the LLM with its "
            f"LoRA attached (e.g. {', '.join(unplaced[:3])}); expected keys like "
            f"{next(k for k in sorted(targets) if 'lora_A' in k)}: is this a UAE release llm_lora folder?"
        )
    if not any("lora_" in k for k in state):
        raise ConfigError(f"{folder}: the shards hold no LoRA weights (no lora_A / lora_B keys)")
    composite.load_state_dict(state, strict=False)
    log.info("llm_lora: %d tensors loaded from %s", len(state), folder)


def load_release(root, *, key: str, dtype: torch.dtype | None = None) -> Release:
    """The release directory at ``root`` (``key``: the config key naming it, for errors)."""
    import torch
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel
    from peft import PeftModel
    from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration

    from workflow_scripts.models.decoder import Decoder, empty_prompt_pooled
    from workflow_scripts.models.encoder import Encoder

    dtype = dtype or torch.float32
    root = check_layout(root, key)
    # the projector lives next to the Qwen weights, which transformers loads without it
    qwen = Qwen2_5_VLForConditionalGeneration.from_pretrained(root / "llm", dtype=dtype)
    projector = release_projector(_llm_state(root / "llm", PROJECTOR_PREFIX), root / "llm")
    if dtype != torch.float32:
        projector = projector.to(dtype)
    attach_llm_lora(qwen, projector, root / "llm_lora")
    processor = AutoProcessor.from_pretrained(root / "llm_model_preprocessor")

    sd3 = root / "SD3_model"
    transformer = SD3Transformer2DModel.from_pretrained(root / "dit", dtype=dtype)
    pooled = empty_prompt_pooled(sd3, transformer, dtype).to(dtype)
    transformer = PeftModel.from_pretrained(transformer, root / "dit_lora")
    decoder = Decoder(
        transformer,
        AutoencoderKL.from_pretrained(sd3 / "vae", dtype=dtype),
        FlowMatchEulerDiscreteScheduler.from_pretrained(sd3 / "scheduler"),
        projector,
        pooled,
    )
    return Release(Encoder(model=qwen, processor=processor), decoder, root)

"""The encoder: Qwen2.5-VL writes long captions; its LLM also reads captions for the decoder."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from workflow_scripts.models.paths import require_model_dir

IGNORE_INDEX = -100


@dataclass(frozen=True)
class CaptionPrompt:
    """The caption turn: its instruction and whether the instruction comes before the image."""

    instruction: str
    instruction_first: bool

    @classmethod
    def of(cls, sampling) -> CaptionPrompt:
        """From ``inference.caption`` (a CaptionSampling)."""
        return cls(sampling.instruction, sampling.content_order == "instruction_first")


def caption_messages(prompt: CaptionPrompt) -> list[dict]:
    """The one user turn that asks for a caption; SFT, RL and evaluation all build it here."""
    if not isinstance(prompt, CaptionPrompt):
        raise TypeError(
            f"a caption prompt must be a CaptionPrompt (CaptionPrompt.of(cfg.inference.caption)), not "
            f"{type(prompt).__name__}: the content order must come from inference.caption.content_order"
        )
    text = {"type": "text", "text": prompt.instruction}
    content = [text, {"type": "image"}] if prompt.instruction_first else [{"type": "image"}, text]
    return [{"role": "user", "content": content}]


@dataclass
class Encoder:
    model: torch.nn.Module  # Qwen2_5_VLForConditionalGeneration (possibly peft-wrapped)
    processor: object  # Qwen2_5_VLProcessor

    @property
    def tokenizer(self):
        return self.processor.tokenizer

    @property
    def image_token_id(self) -> int:
        return self.tokenizer.convert_tokens_to_ids("<|image_pad|>")

    @property
    def vision_token_ids(self) -> list[int]:
        """Ids of the vision markers and placeholders: a caption may never contain one (fed back with the
        image, a sampled ``<|image_pad|>`` no longer matches the image's features and the forward fails)."""
        names = ("<|vision_start|>", "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>")
        ids = [self.tokenizer.convert_tokens_to_ids(name) for name in names]
        return [i for i in ids if i is not None and i != self.tokenizer.unk_token_id]

    @property
    def end_of_turn_id(self) -> int:
        return self.tokenizer.convert_tokens_to_ids("<|im_end|>")

    def prompt(self, instruction: CaptionPrompt) -> str:
        return self.processor.apply_chat_template(
            caption_messages(instruction), tokenize=False, add_generation_prompt=True
        )

    def caption_inputs(
        self, images: Sequence[Image.Image], instruction: CaptionPrompt
    ) -> dict[str, torch.Tensor]:
        """Left-padded caption prompts ready for ``generate``."""
        self.tokenizer.padding_side = "left"
        return self.processor(
            text=[self.prompt(instruction)] * len(images),
            images=list(images),
            return_tensors="pt",
            padding=True,
        )

    def sft_batch(
        self,
        images: Sequence[Image.Image],
        captions: Sequence[str],
        instruction: CaptionPrompt,
        max_caption_tokens: int,
    ) -> dict[str, torch.Tensor]:
        """Prompt + caption + end-of-turn, right-padded; labels only on the caption and end-of-turn."""
        self.tokenizer.padding_side = "right"
        prompts = self.processor(
            text=[self.prompt(instruction)] * len(images),
            images=list(images),
            return_tensors="pt",
            padding=True,
        )
        pad = self.tokenizer.pad_token_id
        rows, labels = [], []
        for i, caption in enumerate(captions):
            prompt_ids = prompts["input_ids"][i][prompts["attention_mask"][i].bool()].tolist()
            caption_ids = self.tokenizer(caption, add_special_tokens=False)["input_ids"][:max_caption_tokens]
            target = [*caption_ids, self.end_of_turn_id]
            rows.append(prompt_ids + target)
            labels.append([IGNORE_INDEX] * len(prompt_ids) + target)
        width = max(map(len, rows))
        input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
        label_ids = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
        attention = torch.zeros((len(rows), width), dtype=torch.long)
        for i, (row, label) in enumerate(zip(rows, labels, strict=True)):
            input_ids[i, : len(row)] = torch.tensor(row)
            label_ids[i, : len(label)] = torch.tensor(label)
            attention[i, : len(row)] = 1
        return {
            "input_ids": input_ids,
            "attention_mask": attention,
            "labels": label_ids,
            "pixel_values": prompts["pixel_values"],
            "image_grid_thw": prompts["image_grid_thw"],
            "mm_token_type_ids": (input_ids == self.image_token_id).int(),
        }

    @torch.no_grad()
    def caption(
        self,
        images: Sequence[Image.Image],
        instruction: CaptionPrompt,
        *,
        temperature: float,
        max_new_tokens: int,
        generator_seed: int | Sequence[int],
    ) -> list[str]:
        """One caption per image, in one ``generate`` call. ``generator_seed``: one seed drawing the whole
        batch from one stream (the captions then depend on the batch), or one seed per image, so that
        each caption depends only on its image and its seed: a batch gives the captions the images get
        one at a time with the same seeds (up to the last bits of a batched forward).

        Sampling is transformers' ``generate(do_sample=True, temperature=...)`` with the model's
        generation config, as the release captions; per-image seeds only change where each row's draw
        comes from (:class:`RowSeeds`)."""
        device = next(self.model.parameters()).device
        inputs = self.caption_inputs(images, instruction).to(device)
        sampling = {"do_sample": temperature > 0}
        if temperature > 0:
            sampling["temperature"] = temperature
            if isinstance(generator_seed, int):
                torch.manual_seed(generator_seed)
            elif len(generator_seed) != len(images):
                raise ValueError(
                    f"{len(generator_seed)} caption seeds for {len(images)} images: give one per image"
                )
            else:
                sampling["watermarking_config"] = RowSeeds(list(generator_seed))
        out = self.model.generate(
            **inputs, max_new_tokens=max_new_tokens, suppress_tokens=self.vision_token_ids, **sampling
        )
        texts = self.tokenizer.batch_decode(out[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
        return [t.strip() for t in texts]


class RowSeeds:
    """One seeded generator per row for ``generate``'s sampling (it draws a batch from the global stream).

    transformers builds its sampling processors (suppression, temperature, the generation config's top-k /
    top-p) and appends a watermarking config's processor after all of them, right before its multinomial
    draw: that slot is the only one that sees the final scores, so this config (duck-typed as a
    ``watermarking_config``; it watermarks nothing) puts :class:`RowDraw` there."""

    def __init__(self, seeds: list[int]) -> None:
        self.seeds = seeds

    def validate(self) -> None:
        pass

    def construct_processor(self, vocab_size: int, device) -> RowDraw:
        return RowDraw([torch.Generator(device=device).manual_seed(int(s)) for s in self.seeds])


class RowDraw:
    """Draws each row's token from the final scores with the row's own generator, exactly as
    ``generate`` draws a batch of one (softmax, then ``torch.multinomial``), and returns scores on which
    ``generate``'s own draw can only pick that token."""

    def __init__(self, generators: list[torch.Generator]) -> None:
        self.generators = generators

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if len(scores) != len(self.generators):
            raise ValueError(f"{len(self.generators)} caption seeds for a batch of {len(scores)} rows")
        probs = torch.softmax(scores, dim=-1)
        tokens = torch.cat(
            [torch.multinomial(p[None], 1, generator=g) for p, g in zip(probs, self.generators, strict=True)]
        )
        return torch.full_like(scores, -torch.inf).scatter_(1, tokens, 0.0)


ADAPTER_FORMAT = "uae_encoder.json"


def load_encoder(
    path,
    *,
    key: str = "models.encoder.path",
    dtype: torch.dtype = torch.float32,
    device_map: str | None = None,
) -> Encoder:
    """A Qwen2.5-VL directory, or a LoRA checkpoint (``adapter/`` + ``uae_encoder.json`` naming its base),
    which is loaded over its base and merged. ``device_map="auto"`` spreads a model too large for one GPU
    over the node's (``harness.device.spread_device_map``)."""
    from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration

    folder = Path(path) if path else None
    if folder is not None and (folder / ADAPTER_FORMAT).exists() and not (folder / "config.json").exists():
        from peft import PeftModel

        base = (folder / json.loads((folder / ADAPTER_FORMAT).read_text())["base"]).resolve()
        encoder = load_encoder(base, key=f"base of {folder}", dtype=dtype, device_map=device_map)
        encoder.model = PeftModel.from_pretrained(encoder.model, folder / "adapter").merge_and_unload()
        return encoder
    folder = require_model_dir(path, key)
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(folder, dtype=dtype, device_map=device_map)
    processor = AutoProcessor.from_pretrained(folder)
    return Encoder(model=model, processor=processor)


def export_encoder(
    model: torch.nn.Module, processor, out_dir: Path, *, lora: bool, final: bool, start: Path
) -> None:
    """Save an encoder as :func:`load_encoder` loads it. With LoRA: the adapter (``adapter/``), plus on the
    final export the merged model; checkpoints never merge (training weights stay untouched) and name
    ``start``, the directory the adapter applies to, relative to themselves."""
    from workflow_scripts.train.lora import merged

    out_dir.mkdir(parents=True, exist_ok=True)
    processor.save_pretrained(out_dir)
    if not lora:
        model.save_pretrained(out_dir)
        return
    model.save_pretrained(out_dir / "adapter")
    if final:
        merged(model).save_pretrained(out_dir)
    else:
        relative = os.path.relpath(Path(start).resolve(), out_dir.resolve())
        (out_dir / ADAPTER_FORMAT).write_text(json.dumps({"base": relative}))

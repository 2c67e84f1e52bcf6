"""Draft captioners and refiners. A captioner maps raw items to captions (None = failed, with reason).

Paper preset: a large VLM drafts and a strong LLM refines (LongCap: InternVL-78B, then GPT-4o), both
loaded from local paths. Tiny preset: the exact scene-graph captioner for synthetic scenes and the
package's own description for bundled photographs.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass

from tqdm import tqdm

from workflow_scripts.data import images, scenes
from workflow_scripts.data.config import CaptionModelConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Caption:
    text: str | None
    error: str | None = None


def scene_graph(items: Sequence[dict]) -> list[Caption]:
    out = []
    for item in items:
        meta = json.loads(item["meta"])
        if "scene" not in meta:
            out.append(Caption(None, "scene_graph captioner needs a synthetic scene"))
            continue
        out.append(Caption(scenes.describe(scenes.Scene.from_json(json.dumps(meta["scene"])))))
    return out


def docstring(items: Sequence[dict]) -> list[Caption]:
    return [_from_meta(item, "description") for item in items]


def sidecar(items: Sequence[dict]) -> list[Caption]:
    return [_from_meta(item, "sidecar") for item in items]


def _from_meta(item: dict, key: str) -> Caption:
    text = json.loads(item["meta"]).get(key)
    return Caption(text) if text else Caption(None, f"no {key} caption for {item['item_id']}")


class VLMDrafter:
    """Image -> draft caption with a local image-text-to-text model (transformers Auto classes)."""

    def __init__(self, cfg: CaptionModelConfig, seed: int, device: str = "cpu") -> None:
        import torch
        from transformers import AutoModelForImageTextToText, AutoProcessor

        from workflow_scripts.harness.device import place, spread_device_map
        from workflow_scripts.models.paths import require_model_dir

        path = require_model_dir(cfg.path, "data.captioning.draft_model.path")
        self.cfg, self.seed, self.device = cfg, seed, device
        self.processor = AutoProcessor.from_pretrained(path)
        dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
        spread = spread_device_map()  # a 78B drafter spans the node's GPUs (data_caption: one task a node)
        self.model = place(
            AutoModelForImageTextToText.from_pretrained(path, dtype=dtype, device_map=spread), device
        )

    def __call__(self, items: Sequence[dict]) -> list[Caption]:
        import torch

        out: list[Caption] = []
        self.processor.tokenizer.padding_side = "left"
        for start in tqdm(range(0, len(items), self.cfg.batch_size), desc="draft captions", unit="batch"):
            batch = items[start : start + self.cfg.batch_size]
            decoded = [images.decode(item["data"]) for item in batch]
            ok = [i for i, d in enumerate(decoded) if d.image is not None]
            captions: dict[int, Caption] = {
                i: Caption(None, d.error) for i, d in enumerate(decoded) if d.image is None
            }
            if ok:
                messages = [
                    {
                        "role": "user",
                        "content": [{"type": "image"}, {"type": "text", "text": self.cfg.prompt}],
                    }
                ]
                prompt = self.processor.apply_chat_template(messages, add_generation_prompt=True)
                inputs = self.processor(
                    text=[prompt] * len(ok),
                    images=[decoded[i].image for i in ok],
                    return_tensors="pt",
                    padding=True,
                ).to(self.model.device)
                torch.manual_seed(self.seed + start)
                with torch.no_grad():
                    generated = self.model.generate(**inputs, **_sampling(self.cfg))
                texts = self.processor.batch_decode(
                    generated[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True
                )
                captions.update(
                    {
                        i: Caption(t.strip() or None, None if t.strip() else "empty caption")
                        for i, t in zip(ok, texts, strict=True)
                    }
                )
            out.extend(captions[i] for i in range(len(batch)))
        return out


class LLMRefiner:
    """Draft -> refined caption with a local instruction LLM (the paper used GPT-4o here)."""

    def __init__(self, cfg: CaptionModelConfig, seed: int, device: str = "cpu") -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from workflow_scripts.harness.device import place, spread_device_map
        from workflow_scripts.models.paths import require_model_dir

        path = require_model_dir(cfg.path, "data.captioning.refine_model.path")
        self.cfg, self.seed, self.device = cfg, seed, device
        self.tokenizer = AutoTokenizer.from_pretrained(path, padding_side="left")
        dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
        spread = spread_device_map()
        self.model = place(AutoModelForCausalLM.from_pretrained(path, dtype=dtype, device_map=spread), device)

    def __call__(self, drafts: Sequence[Caption]) -> list[Caption]:
        import torch

        out = list(drafts)
        todo = [i for i, d in enumerate(drafts) if d.text]
        for start in tqdm(range(0, len(todo), self.cfg.batch_size), desc="refine captions", unit="batch"):
            index = todo[start : start + self.cfg.batch_size]
            prompts = [
                self.tokenizer.apply_chat_template(
                    [{"role": "user", "content": f"{self.cfg.prompt}\n\n{drafts[i].text}"}],
                    tokenize=False,
                    add_generation_prompt=True,
                )
                for i in index
            ]
            inputs = self.tokenizer(prompts, return_tensors="pt", padding=True).to(self.model.device)
            torch.manual_seed(self.seed + start)
            with torch.no_grad():
                generated = self.model.generate(**inputs, **_sampling(self.cfg))
            texts = self.tokenizer.batch_decode(
                generated[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True
            )
            for i, text in zip(index, texts, strict=True):
                out[i] = Caption(text.strip()) if text.strip() else Caption(None, "refiner returned nothing")
        return out


def _sampling(cfg: CaptionModelConfig) -> dict:
    if cfg.temperature > 0:
        return {"max_new_tokens": cfg.max_new_tokens, "do_sample": True, "temperature": cfg.temperature}
    return {"max_new_tokens": cfg.max_new_tokens, "do_sample": False}


SIMPLE_DRAFTERS = {"scene_graph": scene_graph, "docstring": docstring, "sidecar": sidecar}

"""GenEval++'s VLM judge on a local Qwen2.5-VL directory (the official judge is GPT-4.1 over an API).

The judge gets a system instruction (a strict evaluator's rules and the verdict format) and one user turn:
the item's instruction (its prompt) and checklist as text, then the image as the official script sends it
(JPEG-encoded). Decoding is greedy (the official temperature 0) with at most 200 new tokens; parsing and
retries are :func:`workflow_scripts.eval.geneval_pp.judge_item`'s.
"""

from __future__ import annotations

import io
from pathlib import Path

import torch
from PIL import Image

from workflow_scripts.eval.geneval_pp import MAX_NEW_TOKENS, checklist

JUDGE_KEY = "eval.geneval_pp.judge_path"

SYSTEM_INSTRUCTION = """You judge generated images, strictly.

Decide whether the image does everything the instruction and the expectation checklist ask for.

Rules:
1. Every expectation must hold; one failure makes the image wrong. Check:
   - which kinds of object are there
   - how many of each
   - the colour of each
   - where each one is in the image, by its actual pixel position (for example "above" or "below")
   - the size of each, and how large the objects are relative to one another
2. The image must be one natural, coherent scene that looks like a photograph.
   - Stylised pictures (cartoon, sketch, anime and the like) are wrong.
   - Collages and pictures made of several panels are wrong; only a single consistent, realistic scene
     passes.
3. When in doubt, judge the image wrong.

Answer with one JSON object of this form:
{
  "correct": 1 when the image meets every expectation, otherwise 0,
  "reason": "what is missing or wrong, in as much detail as you like"
}"""


def user_text(item: dict) -> str:
    return f"Instruction:\n{item['prompt'].strip()}\n\nExpectation checklist:\n{checklist(item)}"


def messages(item: dict) -> list[dict]:
    """The chat the judge sees: system rules, then the item's text followed by its image."""
    return [
        {"role": "system", "content": SYSTEM_INSTRUCTION},
        {"role": "user", "content": [{"type": "text", "text": user_text(item)}, {"type": "image"}]},
    ]


def as_sent(image: Image.Image) -> Image.Image:
    """The image after the official script's JPEG encoding (PIL's default quality)."""
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="JPEG")
    buffer.seek(0)
    with Image.open(buffer) as decoded:
        return decoded.convert("RGB")


class VLMJudge:
    """A Qwen2.5-VL directory (e.g. Qwen2.5-VL-72B-Instruct) answering GenEval++ verdicts."""

    def __init__(self, path: str, device: torch.device, dtype: torch.dtype = torch.float32) -> None:
        from workflow_scripts.harness.device import place, spread_device_map
        from workflow_scripts.models.encoder import load_encoder

        encoder = load_encoder(path, key=JUDGE_KEY, dtype=dtype, device_map=spread_device_map())
        self.model = place(encoder.model, device)
        self.processor = encoder.processor
        self.device = self.model.device  # the first GPU when spread over a node's
        self.name = f"{Path(path).name} (local VLM)"

    def prompt(self, item: dict) -> str:
        return self.processor.apply_chat_template(messages(item), add_generation_prompt=True)

    @torch.no_grad()
    def __call__(self, item: dict, image: Image.Image) -> str:
        self.processor.tokenizer.padding_side = "left"
        inputs = self.processor(text=[self.prompt(item)], images=[as_sent(image)], return_tensors="pt").to(
            self.device
        )
        out = self.model.generate(**inputs, max_new_tokens=MAX_NEW_TOKENS, do_sample=False)
        return self.processor.batch_decode(out[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)[
            0
        ]

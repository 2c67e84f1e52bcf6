"""Conversations in the released format -> token ids and labels, with images as code + feature spans.

A record is ``{"conversations": [{"from": "human" | "gpt", "value": "... <|image|> ..."}], "image":
[paths]}``. Each turn ends with the end-of-turn token; the LM learns the gpt turns (text, and the codes
and markers of an image it produces), never the human turns or any continuous position.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import torch
from transformers import AutoTokenizer, ChameleonConfig, SiglipVisionConfig

# the released vocabulary's names (Chameleon / Lumina-mGPT); the tiny tokenizer uses the same ones
TOKEN_NAMES = {
    "bos": "<s>",
    "eos": "</s>",
    "pad": "<pad>",
    "end_of_turn": "<reserved08706>",
    "start_of_image": "<racm3:break>",
    "end_of_image": "<eoss>",
    "separator": "<sentinel:0>",
    "continuous": "<image>",
}
IGNORE = -100


@dataclass(frozen=True)
class TokenIds:
    bos: int
    eos: int
    pad: int
    end_of_turn: int
    start_of_image: int
    end_of_image: int
    separator: int
    continuous: int

    @classmethod
    def of(cls, tokenizer) -> TokenIds:
        ids = {key: tokenizer.convert_tokens_to_ids(name) for key, name in TOKEN_NAMES.items()}
        unknown = [TOKEN_NAMES[k] for k, v in ids.items() if v is None or v == tokenizer.unk_token_id]
        if unknown:
            raise ValueError(f"the LM's tokenizer lacks the special tokens {unknown}; is it a Chameleon LM?")
        return cls(**ids)


def code_token_name(code: int) -> str:
    """Chameleon's name of image code ``code``: digits spelled as letters A-J, e.g. 12 -> IMGIMGBCZ."""
    return "IMGIMG" + "".join(chr(ord("A") + int(d)) for d in str(code)) + "Z"


PLACEHOLDER = "<|image|>"
ROLES = {"human": False, "gpt": True}  # role -> supervised


class RecordError(ValueError):
    """A record that cannot be tokenised; the message is the logged rejection reason."""


@dataclass
class Layout:
    """What turning text and images into one sequence needs: no model weights."""

    tokenizer: object
    ids: TokenIds
    code_to_token: list[int]
    continuous_slots: int

    @classmethod
    def from_dirs(cls, lm_dir: Path, vision_dir: Path) -> Layout:
        config = ChameleonConfig.from_pretrained(lm_dir)
        vision = SiglipVisionConfig.from_pretrained(vision_dir)
        names = config.vocabulary_map
        codebook = config.vq_config.num_embeddings
        missing = [c for c in range(codebook) if code_token_name(c) not in names]
        if missing:
            raise ValueError(f"{lm_dir}: no image-code tokens for codes {missing[:5]}...")
        tokenizer = AutoTokenizer.from_pretrained(lm_dir)
        return cls(
            tokenizer,
            TokenIds.of(tokenizer),
            [names[code_token_name(c)] for c in range(codebook)],
            (vision.image_size // vision.patch_size) ** 2,
        )

    @cached_property
    def token_to_code(self) -> dict[int, int]:
        return {token: code for code, token in enumerate(self.code_to_token)}

    def text(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def image_segment(self, codes: torch.Tensor | list[int]) -> list[int]:
        """<start-of-image> code tokens <separator> <image> x slots <end-of-image>."""
        codes = codes.flatten().tolist() if isinstance(codes, torch.Tensor) else list(codes)
        ids = self.ids
        return [
            ids.start_of_image,
            *(self.code_to_token[c] for c in codes),
            ids.separator,
            *[ids.continuous] * self.continuous_slots,
            ids.end_of_image,
        ]

    def encode(self, turns: list[dict], codes: list) -> tuple[list[int], list[int]]:
        """(input_ids, labels) of a conversation whose images have these VQ codes, in order."""
        placeholders = sum(str(t.get("value", "")).count(PLACEHOLDER) for t in turns)
        if placeholders != len(codes):
            raise RecordError(f"{placeholders} {PLACEHOLDER} placeholders but {len(codes)} images")
        if not turns:
            raise RecordError("empty conversation")
        input_ids, labels = [self.ids.bos], [IGNORE]
        images = iter(codes)
        for turn in turns:
            role = turn.get("from")
            if role not in ROLES:
                raise RecordError(f"unknown role {role!r} (expected human or gpt)")
            supervised = ROLES[role]
            pieces = str(turn.get("value", "")).split(PLACEHOLDER)
            for n, piece in enumerate(pieces):
                if n:
                    segment = self.image_segment(next(images))
                    input_ids += segment
                    labels += [t if supervised and t != self.ids.continuous else IGNORE for t in segment]
                text = self.text(piece)
                input_ids += text
                labels += text if supervised else [IGNORE] * len(text)
            input_ids.append(self.ids.end_of_turn)
            labels.append(self.ids.end_of_turn if supervised else IGNORE)
        return input_ids, labels

    def caption_prompt(self, codes, instruction: str) -> list[int]:
        """What the model continues with a caption: the human turn with the image, then end-of-turn."""
        ids, _ = self.encode([{"from": "human", "value": f"{PLACEHOLDER}\n{instruction}"}], [codes])
        return ids

    def generation_prompt(self, prompt: str, instruction: str) -> list[int]:
        """The human turn asking for an image, then <start-of-image>: the model continues with codes."""
        ids, _ = self.encode([{"from": "human", "value": f"{instruction}{prompt}"}], [])
        return [*ids, self.ids.start_of_image]

    def unconditional_prompt(self) -> list[int]:
        """Classifier-free guidance's context: the image start alone (as the released sampler)."""
        return [self.ids.bos, self.ids.start_of_image]


def longcap_conversations(caption: str, caption_instruction: str, generate_instruction: str) -> dict:
    """One (image, long caption) pair as the two released-format records it trains: read and draw."""
    return {
        "caption": [
            {"from": "human", "value": f"{PLACEHOLDER}\n{caption_instruction}"},
            {"from": "gpt", "value": caption},
        ],
        "generate": [
            {"from": "human", "value": f"{generate_instruction}{caption}"},
            {"from": "gpt", "value": PLACEHOLDER},
        ],
    }


def read_conversation_file(path: Path) -> list[dict]:
    """A released-format file: a JSON list (or JSON lines) of records."""
    text = Path(path).read_text()
    try:
        records = json.loads(text)
    except json.JSONDecodeError:
        records = [json.loads(line) for line in text.splitlines() if line.strip()]
    if not isinstance(records, list):
        raise ValueError(f"{path}: expected a JSON list of conversation records")
    return records

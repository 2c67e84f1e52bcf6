"""Conversations in the released format -> token ids and labels, with images as code + feature spans.

A record is ``{"conversations": [{"from": "human" | "gpt", "value": "... <|image|> ..."}], "image":
[paths]}``. Each turn ends with the end-of-turn token; the LM learns the gpt turns (text, and the codes
and markers of an image it produces), never the human turns or any continuous position.

An image is laid out as the released model reads and writes it (Lumina-mGPT's ``FlexARItemProcessor``
in SxJyJay/UniToken ``unitoken/data/item_processor.py``), with UniToken's continuous features spliced in
before the image end exactly where its ``modeling_xllmx_chameleon_base.forward`` puts them::

    <racm3:break> <grid h> <grid w> (row codes <new-line>) x rows <sentinel:0> features <eoss>

The grid tokens count pairs of latent rows (Chameleon's 32-px grids over 16-px latents), so the
released 512-px image is ``<reserved08816>`` twice, then 32 x (32 + 1) tokens. A drawn image has no
features: sampling forces ``<eoss>`` right after the last row (``sampling.ImageLayoutProcessor``).
The separator's label is the separator itself even in a human turn, as in the release.
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
    "new_line": "<reserved08799>",
}
# <reserved{8800+n}> says "n grids" (id 8804 + n in the released vocabulary); 64 grids = 2048 px
GRID_TOKENS = range(1, 65)
LATENT_ROWS_PER_GRID = 2
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
    new_line: int

    @classmethod
    def of(cls, tokenizer) -> TokenIds:
        ids = {key: tokenizer.convert_tokens_to_ids(name) for key, name in TOKEN_NAMES.items()}
        unknown = [TOKEN_NAMES[k] for k, v in ids.items() if v is None or v == tokenizer.unk_token_id]
        if unknown:
            raise ValueError(
                f"the LM's tokenizer lacks the special tokens {unknown}; is it a Chameleon LM? (A tiny LM "
                "built before the released image layout lacks the new-line and grid-size tokens: rebuild "
                "it with `snakemake --forcerun build_tiny_model`.)"
            )
        return cls(**ids)


def grid_token_name(grids: int) -> str:
    return f"<reserved{8800 + grids:05d}>"


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

    def grid_token(self, latent_rows: int) -> int:
        """The grid-size token of a side of ``latent_rows`` codes (``<reserved{8800 + n}>``, n grids)."""
        if latent_rows <= 0 or latent_rows % LATENT_ROWS_PER_GRID:
            raise ValueError(
                f"an image side of {latent_rows} codes is not a whole number of grids "
                f"({LATENT_ROWS_PER_GRID} code rows each): choose a VQ resolution that gives an even grid"
            )
        name = grid_token_name(latent_rows // LATENT_ROWS_PER_GRID)
        token = self.tokenizer.convert_tokens_to_ids(name)
        if token is None or token == self.tokenizer.unk_token_id:
            raise ValueError(f"the LM's tokenizer has no grid-size token {name}; is it a Chameleon LM?")
        return token

    def drawn_segment(self, codes: torch.Tensor) -> list[int]:
        """An image as the model writes it: start, grid sizes, rows each ended by new-line, end."""
        grid = torch.as_tensor(codes)
        if grid.ndim != 2:
            raise ValueError(f"image codes must be a rows x columns grid, got shape {tuple(grid.shape)}")
        rows, cols = grid.shape
        ids = self.ids
        body: list[int] = []
        for row in grid.tolist():
            body += [self.code_to_token[c] for c in row]
            body.append(ids.new_line)
        return [ids.start_of_image, self.grid_token(rows), self.grid_token(cols), *body, ids.end_of_image]

    def image_segment(self, codes: torch.Tensor) -> list[int]:
        """An image as the model reads it: the drawn layout with <separator> and the continuous
        placeholders spliced in before <end-of-image> (UniToken's place for SigLIP features)."""
        drawn = self.drawn_segment(codes)
        return [*drawn[:-1], self.ids.separator, *[self.ids.continuous] * self.continuous_slots, drawn[-1]]

    def segment_labels(self, segment: list[int], supervised: bool) -> list[int]:
        """A drawn image learns its grid sizes, codes, new-lines and end; the separator is learnt in
        every image (the release labels it unconditionally); continuous positions never are."""
        ids = self.ids
        return [t if t == ids.separator or (supervised and t != ids.continuous) else IGNORE for t in segment]

    def drawn_length(self, rows: int, cols: int) -> int:
        """Tokens the model writes after <start-of-image>: two grid sizes, the rows, <end-of-image>."""
        return 2 + rows * (cols + 1) + 1

    def codes_of_drawn(self, tokens: list[int], rows: int, cols: int) -> torch.Tensor:
        """The rows x cols code grid of what the model wrote after <start-of-image> (the inverse of
        ``drawn_segment`` without its start token); anything off the layout is an error."""
        expected = self.drawn_segment(torch.zeros(rows, cols, dtype=torch.long))[1:]
        if len(tokens) != len(expected):
            raise ValueError(f"a drawn {rows}x{cols} image has {len(expected)} tokens, got {len(tokens)}")
        grid = torch.tensor(tokens[2 : 2 + rows * (cols + 1)]).view(rows, cols + 1)
        frame = [*tokens[:2], *grid[:, -1].tolist(), tokens[-1]]
        if frame != [*expected[:2], *[self.ids.new_line] * rows, expected[-1]]:
            raise ValueError("a drawn image's grid sizes, new-lines or end token are off the layout")
        lookup = self.token_to_code
        body = grid[:, :-1].flatten().tolist()
        strays = sorted({t for t in body if t not in lookup})
        if strays:
            raise ValueError(f"a drawn image holds tokens that are not image codes: {strays[:5]}")
        return torch.tensor([lookup[t] for t in body]).view(rows, cols)

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
                    labels += self.segment_labels(segment, supervised)
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

"""UniToken: sequence layout, objective, restricted sampling, the VQ decoder's checkpoint layout, records."""

from __future__ import annotations

import json
import math
from typing import ClassVar

import pytest
import torch
import yaml
from PIL import Image
from transformers import ChameleonVQVAEConfig

from workflow_scripts.config.loader import parse, resolve
from workflow_scripts.tiny import unitoken as tiny
from workflow_scripts.unitoken.model import UniToken
from workflow_scripts.unitoken.objective import lm_loss
from workflow_scripts.unitoken.sampling import (
    AllowedTokens,
    Sampling,
    drawing_processors,
    guide,
    image_code_mask,
    pick,
    sample,
    text_mask,
)
from workflow_scripts.unitoken.sequence import IGNORE, PLACEHOLDER, RecordError
from workflow_scripts.unitoken.vq import (
    VQDecoder,
    VQTokenizer,
    config_from_released_yaml,
    convert_released,
    load_released_tokenizer,
    psnr,
    to_pixels,
)

CORPUS = ["a red circle at the top left", "two blue squares in the middle", "a green star"] * 30


@pytest.fixture(scope="module")
def cfg():
    return parse(resolve({"preset": "tiny"}))


@pytest.fixture(scope="module")
def parts(cfg, tmp_path_factory):
    """A tiny Chameleon LM (with image-code vocabulary) and SigLIP, saved and loaded back."""
    root = tmp_path_factory.mktemp("unitoken")
    models = cfg.unitoken.models
    tiny.build_lm(models.tiny_lm, models.tiny_vq, 0, CORPUS, root / "lm")
    tiny.build_vision(models.tiny_vision, 0, root / "vision")
    return root


@pytest.fixture
def model(parts):
    torch.manual_seed(0)
    return UniToken.assemble(parts / "lm", parts / "vision").eval()


def test_sequence_layout_of_a_hand_made_conversation(model):
    layout = model.layout
    ids = layout.ids
    codes = torch.tensor([[5, 1], [0, 255]])  # a 2x2 grid: one grid (two code rows) each way
    turns = [
        {"from": "human", "value": f"{PLACEHOLDER}\nwhat is this?"},
        {"from": "gpt", "value": "a red circle"},
    ]
    input_ids, labels = layout.encode(turns, [codes])
    token = layout.tokenizer.convert_tokens_to_ids
    one_grid, new_line = token("<reserved08801>"), token("<reserved08799>")
    c = [layout.code_to_token[n] for n in (5, 1, 0, 255)]
    slots = layout.continuous_slots
    assert slots == (32 // 8) ** 2
    question, answer = layout.text("\nwhat is this?"), layout.text("a red circle")
    expected = [
        ids.bos,
        ids.start_of_image,
        one_grid,  # height, then width, in grids
        one_grid,
        *c[:2],
        new_line,  # each code row ends with the new-line token
        *c[2:],
        new_line,
        ids.separator,  # UniToken's features go after the rows, before the image end
        *[ids.continuous] * slots,
        ids.end_of_image,
        *question,
        ids.end_of_turn,
        *answer,
        ids.end_of_turn,
    ]
    assert input_ids == expected
    human = 1 + 3 + 6 + 1 + slots + 1 + len(question) + 1
    separator = 1 + 3 + 6
    # the human turn, its image included, is context; only the separator is learnt (as released)
    assert labels[:human] == [ids.separator if n == separator else IGNORE for n in range(human)]
    assert labels[human:] == [*answer, ids.end_of_turn]
    # image codes are tokens of their own, distinct from text and markers
    assert set(c).isdisjoint(layout.text("a red circle what is this"))

    # an image the model draws is supervised: codes and markers, but never the continuous positions
    draw = [{"from": "human", "value": "draw a star"}, {"from": "gpt", "value": PLACEHOLDER}]
    input_ids, labels = layout.encode(draw, [codes])
    start = input_ids.index(ids.start_of_image)
    segment = slice(start, start + 3 + 6 + 1 + slots + 1)
    assert input_ids[segment][-1] == ids.end_of_image
    for token, label in zip(input_ids[segment], labels[segment], strict=True):
        assert label == (IGNORE if token == ids.continuous else token)
    assert labels[-1] == ids.end_of_turn


class ReleasedVocabulary:
    """The released Chameleon vocabulary's ids for the names the layout uses (Lumina-mGPT /
    UniToken): <reserved{n}> is id n + 4 (the release decodes grid tokens as id - 8804 and stops at
    <reserved08706> = 8710), <eoss> 8196, <racm3:break> 8197, <sentinel:0> 8198, codes 4..8195."""

    unk_token_id = 3
    fixed: ClassVar[dict[str, int]] = {
        "<s>": 0,
        "<pad>": 1,
        "</s>": 2,
        "<eoss>": 8196,
        "<racm3:break>": 8197,
        "<sentinel:0>": 8198,
    }

    def convert_tokens_to_ids(self, name: str) -> int:
        if name in self.fixed:
            return self.fixed[name]
        if name == "<image>":
            return 8711
        if name.startswith("<reserved"):
            return int(name.removeprefix("<reserved").removesuffix(">")) + 4
        return self.unk_token_id


def released_layout():
    from workflow_scripts.unitoken.sequence import Layout, TokenIds

    vocabulary = ReleasedVocabulary()
    return Layout(vocabulary, TokenIds.of(vocabulary), [4 + c for c in range(8192)], 729)


def test_a_512_px_image_in_the_released_layout_at_the_released_ids():
    layout = released_layout()
    codes = (torch.arange(32 * 32) * 7 % 8192).view(32, 32)  # a 512-px image: 32 x 32 codes
    drawn = layout.drawn_segment(codes)
    assert drawn[0] == 8197 and drawn[-1] == 8196  # <racm3:break> ... <eoss>
    assert len(drawn) - 2 == 2 + 32 * (32 + 1)  # between start and end
    assert drawn[1:3] == [8820, 8820]  # 16 grids high, 16 wide: <reserved08816>
    body = drawn[3:-1]
    new_lines = [n for n, t in enumerate(body) if t == 8803]  # <reserved08799>
    assert new_lines == list(range(32, 32 * 33, 33))  # every 33rd token, the last one included
    assert [t for t in body if t != 8803] == [4 + c for c in codes.flatten().tolist()]
    # read back: the features follow the rows, before <eoss>
    read = layout.image_segment(codes)
    assert read == [*drawn[:-1], 8198, *[8711] * 729, 8196]
    torch.testing.assert_close(layout.codes_of_drawn(drawn[1:], 32, 32), codes)
    with pytest.raises(ValueError, match="grid sizes, new-lines or end token"):
        layout.codes_of_drawn([*drawn[1:-2], 4, 8196], 32, 32)
    with pytest.raises(ValueError, match="not a whole number of grids"):
        layout.drawn_segment(torch.zeros(3, 4, dtype=torch.long))


def test_the_layout_processor_forces_grid_sizes_new_lines_and_end_and_masks_the_rest():
    from workflow_scripts.unitoken.sampling import ImageLayoutProcessor

    layout = released_layout()
    vocab = 8832
    codes = torch.zeros(vocab, dtype=torch.bool)
    codes[4:8196] = True
    processor = ImageLayoutProcessor(layout.ids, (8820, 8820), 32, 32, codes)
    generator = torch.Generator().manual_seed(0)
    sequence = [0, 300, 301, 8197]  # <s>, a prompt, <racm3:break>
    for written in range(2 + 32 * 33 + 1):
        scores = torch.randn(1, vocab, generator=generator)
        out = processor(torch.tensor([sequence]), scores)[0]
        body = written - 2
        if written < 2:
            forced = 8820
        elif body == 32 * 33:
            forced = 8196
        elif body % 33 == 32:
            forced = 8803
        else:
            forced = None
        if forced is None:  # a code position: the scores of codes untouched, everything else -inf
            assert torch.equal(out[codes], scores[0, codes])
            assert torch.isinf(out[~codes]).all() and (out[~codes] < 0).all()
            token = 4 + written % 8192
        else:
            assert out[forced] == 0 and torch.isinf(out).sum() == vocab - 1, written
            token = forced
        sequence.append(token)
    # the image is closed: text scores pass unchanged
    scores = torch.randn(1, vocab, generator=generator)
    assert torch.equal(processor(torch.tensor([sequence]), scores), scores)


def test_guidance_starts_its_unconditional_stream_at_the_image_start_token(model):
    from workflow_scripts.unitoken.sampling import ImageStartGuidance

    layout = model.layout
    grid = layout.grid_token(8)
    prompt = layout.generation_prompt("a red circle", "draw: ")
    assert prompt[0] == layout.ids.bos and prompt[-1] == layout.ids.start_of_image
    code = layout.code_to_token[7]

    def last_logits(ids: list[int]) -> torch.Tensor:
        with torch.no_grad():
            hidden = model.lm.model(input_ids=torch.tensor([ids])).last_hidden_state
            return model.lm.lm_head(hidden[:, -1]).float()

    guidance = ImageStartGuidance(model, 3.0)
    cond = torch.randn(1, model.lm.config.vocab_size)
    # the grid sizes are forced: no guidance before they are written
    assert torch.equal(guidance(torch.tensor([[*prompt, grid]]), cond), cond)
    for written in ([grid, grid], [grid, grid, code]):
        uncond = last_logits([layout.ids.start_of_image, *written])  # no <s>, no prompt
        guided = guidance(torch.tensor([[*prompt, *written]]), cond)
        torch.testing.assert_close(guided, uncond + 3.0 * (cond - uncond), rtol=1e-4, atol=1e-4)
        with_bos = last_logits([layout.ids.bos, layout.ids.start_of_image, *written])
        assert not torch.allclose(guided, with_bos + 3.0 * (cond - with_bos), atol=1e-3)


@pytest.mark.parametrize(
    ("turns", "images", "reason"),
    [
        (
            [{"from": "human", "value": f"{PLACEHOLDER}{PLACEHOLDER}"}, {"from": "gpt", "value": "x"}],
            1,
            "2 <|image|> placeholders but 1 images",
        ),
        ([{"from": "human", "value": "hi"}, {"from": "gpt", "value": "x"}], 1, "0 <|image|> placeholders"),
        ([{"from": "system", "value": "hi"}], 0, "unknown role 'system'"),
        ([], 0, "empty conversation"),
    ],
)
def test_mismatched_records_are_rejected_with_a_reason(model, turns, images, reason):
    with pytest.raises(RecordError, match=reason.replace("|", r"\|")):
        model.layout.encode(turns, [torch.zeros(2, 2, dtype=torch.long)] * images)


def test_continuous_positions_carry_adapter_features_in_order(model):
    layout = model.layout
    codes = torch.zeros(8, 8, dtype=torch.long)
    ids = torch.tensor([[layout.ids.bos, *layout.image_segment(codes), *layout.image_segment(codes)]])
    images = [Image.new("RGB", (32, 32), "red"), Image.new("RGB", (32, 32), "blue")]
    pixels = model.vision_pixels(images)
    with torch.no_grad():
        embeds = model.embed(ids, pixels)
        features = model.adapter(model.vision(pixel_values=pixels).last_hidden_state)
        tokens = model.lm.get_input_embeddings()(ids)
    slots = (ids[0] == layout.ids.continuous).nonzero().flatten()
    assert len(slots) == 2 * layout.continuous_slots
    torch.testing.assert_close(embeds[0, slots], features.reshape(-1, features.shape[-1]))
    others = (ids[0] != layout.ids.continuous).nonzero().flatten()
    torch.testing.assert_close(embeds[0, others], tokens[0, others])
    with pytest.raises(ValueError, match="continuous positions for 1 images"):
        model.embed(ids, pixels[:1])


def test_loss_is_cross_entropy_plus_weighted_z_loss_by_hand():
    logits = torch.tensor([[[1.0, 2.0, 0.0], [0.5, 0.5, 3.0], [0.0, 0.0, 0.0]]])
    labels = torch.tensor([[IGNORE, 2, IGNORE]])  # only position 0 is scored, on token 2
    loss, parts = lm_loss(logits, labels, z_weight=0.1)
    lse = math.log(math.exp(1) + math.exp(2) + math.exp(0))
    ce = lse - 0.0
    assert parts["ce"].item() == pytest.approx(ce, rel=1e-6)
    assert parts["z_loss"].item() == pytest.approx(lse**2, rel=1e-6)
    assert loss.item() == pytest.approx(ce + 0.1 * lse**2, rel=1e-6)
    with pytest.raises(ValueError, match="without any supervised token"):
        lm_loss(logits, torch.full((1, 3), IGNORE), 0.1)


def test_guidance_and_top_k_by_hand():
    cond, uncond = torch.tensor([2.0, 1.0, 0.0]), torch.tensor([1.0, 1.0, 1.0])
    torch.testing.assert_close(guide(cond, uncond, 3.0), torch.tensor([4.0, 1.0, -2.0]))
    # top-1 sampling is greedy whatever the seed
    logits = torch.tensor([0.1, 5.0, 0.2, 0.3])
    for seed in range(5):
        assert pick(logits, Sampling(steps=1, top_k=1), torch.Generator().manual_seed(seed)) == 1
    # top-2 only ever returns the two best, and both of them
    close = torch.tensor([0.1, 5.0, 4.9, 0.3])
    drawn = {pick(close, Sampling(steps=1, top_k=2), torch.Generator().manual_seed(s)) for s in range(40)}
    assert drawn == {1, 2}


def test_generation_writes_the_released_layout_and_only_codes_inside_it(model):
    layout = model.layout
    codes = image_code_mask(model)
    with torch.no_grad():  # make text tokens overwhelmingly likely: the restriction must still hold
        model.lm.lm_head.weight[~codes] *= 50
        model.lm.lm_head.weight[codes] *= 0.01
    tokens = sample(
        model,
        layout.generation_prompt("a red circle", "draw: "),
        drawing_processors(model, 8, 8, cfg_scale=3.0),
        Sampling(steps=layout.drawn_length(8, 8), temperature=1.0, top_k=16),
        seed=0,
    )
    grid = layout.codes_of_drawn(tokens, 8, 8)
    assert tokens == layout.drawn_segment(grid)[1:]  # grid sizes, 8 rows + new-lines, <eoss>
    assert len(tokens) == 2 + 8 * 9 + 1
    # and a caption never contains an image code even when codes dominate the logits
    with torch.no_grad():
        model.lm.lm_head.weight[codes] *= 1e4
    pixels = model.vision_pixels([Image.new("RGB", (32, 32))])
    caption = sample(
        model,
        layout.caption_prompt(torch.zeros(8, 8, dtype=torch.long), "describe"),
        [AllowedTokens(text_mask(model))],
        Sampling(steps=12, temperature=1.0, stop_token=layout.ids.end_of_turn),
        seed=0,
        pixel_values=pixels,
    )
    assert caption and not set(caption) & set(layout.code_to_token)


def test_image_sampling_is_reproducible_per_seed(model):
    layout = model.layout

    def draw(seed: int) -> list[int]:
        return sample(
            model,
            layout.generation_prompt("a star", "draw: "),
            drawing_processors(model, 8, 8, cfg_scale=1.0),
            Sampling(steps=12, top_k=32),
            seed=seed,
        )

    assert draw(3) == draw(3)
    assert draw(3) != draw(4)


# --- VQ tokenizer -----------------------------------------------------------------------------------
def _released_keys(config: ChameleonVQVAEConfig) -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):
        tokenizer = VQTokenizer(config)
    shapes = {f"decoder.{k}": tuple(v.shape) for k, v in tokenizer.decoder.state_dict().items()}
    shapes.update({k: tuple(v.shape) for k, v in tokenizer.vqvae.state_dict().items()})
    return shapes


def test_decoder_matches_the_released_chameleon_tokenizer_layout():
    """Names and shapes of the released vqgan.ckpt (taming-transformers Decoder, Chameleon's vqgan.yaml:
    ch 128, ch_mult [1,1,2,2,4], z 256, 3 blocks per up level, attention in the middle only)."""
    shapes = _released_keys(ChameleonVQVAEConfig())
    expected = {
        "decoder.conv_in.weight": (512, 256, 3, 3),
        "decoder.mid.block_1.conv1.weight": (512, 512, 3, 3),
        "decoder.mid.attn_1.q.weight": (512, 512, 1, 1),
        "decoder.mid.attn_1.proj_out.weight": (512, 512, 1, 1),
        "decoder.up.4.block.2.conv2.weight": (512, 512, 3, 3),
        "decoder.up.4.upsample.conv.weight": (512, 512, 3, 3),
        "decoder.up.3.block.0.conv1.weight": (256, 512, 3, 3),
        "decoder.up.3.block.0.nin_shortcut.weight": (256, 512, 1, 1),
        "decoder.up.2.upsample.conv.weight": (256, 256, 3, 3),
        "decoder.up.1.block.0.nin_shortcut.weight": (128, 256, 1, 1),
        "decoder.up.0.block.2.norm2.weight": (128,),
        "decoder.norm_out.weight": (128,),
        "decoder.conv_out.weight": (3, 128, 3, 3),
        "post_quant_conv.weight": (256, 256, 1, 1),
        "quant_conv.weight": (256, 256, 1, 1),
        "quantize.embedding.weight": (8192, 256),
    }
    for key, shape in expected.items():
        assert shapes[key] == shape, key
    decoder = [k for k in shapes if k.startswith("decoder.")]
    assert not any(".attn." in k for k in decoder if ".up." in k)  # attn_resolutions is empty
    assert {k for k in decoder if "nin_shortcut.weight" in k} == {
        "decoder.up.3.block.0.nin_shortcut.weight",
        "decoder.up.1.block.0.nin_shortcut.weight",
    }
    assert not any(k.startswith("decoder.up.0.upsample") for k in decoder)
    for level in range(5):
        blocks = {k.split(".")[4] for k in decoder if k.startswith(f"decoder.up.{level}.block.")}
        assert blocks == {"0", "1", "2"}
    with torch.device("meta"):
        params = sum(p.numel() for p in VQDecoder(ChameleonVQVAEConfig()).parameters())
    assert 35e6 < params < 60e6


def test_released_checkpoint_loads_key_for_key_and_rejects_mismatches(tmp_path):
    params = {
        "embed_dim": 8,
        "n_embed": 32,
        "ddconfig": {
            "double_z": False,
            "z_channels": 8,
            "resolution": 16,
            "in_channels": 3,
            "out_ch": 3,
            "ch": 32,
            "ch_mult": [1, 2],
            "num_res_blocks": 1,
            "attn_resolutions": [],
            "dropout": 0.0,
        },
    }
    config = config_from_released_yaml(params)
    torch.manual_seed(0)
    source = VQTokenizer(config)
    state = {f"decoder.{k}": v for k, v in source.decoder.state_dict().items()}
    state.update(source.vqvae.state_dict())
    state["loss.discriminator.main.0.weight"] = torch.zeros(1)  # training-only: dropped
    (tmp_path / "vqgan.yaml").write_text(yaml.safe_dump({"model": {"params": params}}))
    torch.save({"state_dict": state}, tmp_path / "vqgan.ckpt")
    out = convert_released(tmp_path / "vqgan.ckpt", tmp_path / "vqgan.yaml", tmp_path / "converted")
    loaded = VQTokenizer.from_pretrained(out)
    pixels = torch.rand(1, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(loaded(pixels)[0], source.eval()(pixels)[0])
    assert json.loads((out / "source.json").read_text())["checkpoint"].endswith("vqgan.ckpt")

    wrong = dict(state)
    wrong["decoder.conv_out.weight"] = torch.zeros(3, 16, 3, 3)
    with pytest.raises(ValueError, match=r"decoder\.conv_out\.weight"):
        load_released_tokenizer(wrong, config)
    missing = {k: v for k, v in state.items() if k != "post_quant_conv.weight"}
    with pytest.raises(ValueError, match=r"post_quant_conv\.weight"):
        load_released_tokenizer(missing, config)
    with pytest.raises(FileNotFoundError, match="unitoken_vq rule"):
        VQTokenizer.from_pretrained(tmp_path)


def test_psnr_by_hand():
    a = torch.zeros(1, 3, 2, 2)
    b = torch.full((1, 3, 2, 2), 2 / 255)  # one 0..255 level apart everywhere: mse 1
    assert psnr(a, b).item() == pytest.approx(20 * math.log10(255), rel=1e-5)


# --- the three stages learn ---------------------------------------------------------------------------
def _overfit_records(model: UniToken, vq: VQTokenizer) -> list[dict]:
    from workflow_scripts.unitoken.sequence import longcap_conversations

    records = []
    for n, (colour, caption) in enumerate(
        [("red", "a red square"), ("blue", "a blue square"), ("green", "a green square"), ("white", "white")]
    ):
        image = Image.new("RGB", (32, 32), "black")
        image.paste(Image.new("RGB", (16, 16), colour), (8 * (n % 2), 8))
        with torch.no_grad():
            codes, _, _ = vq.encode(to_pixels([image], 32))
        for task, turns in longcap_conversations(caption, "describe", "draw: ").items():
            input_ids, labels = model.layout.encode(turns, [codes[0]])
            records.append({"task": task, "input_ids": input_ids, "labels": labels, "images": [image]})
    return records


# align moves only SigLIP and the adapter under a frozen (random) LM: a small but steady fall;
# joint trains everything and memorises the set (instruct runs the same code on other record kinds)
@pytest.mark.parametrize(("stage", "lr", "fall"), [("align", 5e-2, 0.05), ("joint", 3e-3, 1.5)])
def test_each_stage_loss_falls_on_a_tiny_overfit_set(cfg, parts, tmp_path, stage, lr, fall):
    from dataclasses import replace

    from workflow_scripts.train.batches import BatchPlan
    from workflow_scripts.train.loop import StagePaths, train
    from workflow_scripts.train.metrics import read
    from workflow_scripts.unitoken.training import UniTokenTraining
    from workflow_scripts.unitoken.vq import vq_config

    torch.manual_seed(0)
    model = UniToken.assemble(parts / "lm", parts / "vision")
    vq = VQTokenizer(vq_config(cfg.unitoken.models.tiny_vq)).eval()
    (spec,) = [s for s in cfg.unitoken.stages if s.name == stage]
    records = [r for r in _overfit_records(model, vq) if r["task"] in spec.tasks]
    loop = replace(
        spec.loop,
        steps=30,
        batch_size=4,
        micro_batch_size=2,
        log_every=1,
        optim=replace(spec.loop.optim, lr=lr, warmup_steps=0, schedule="constant"),
        checkpoint=replace(spec.loop.checkpoint, every_steps=30),
    )
    task = UniTokenTraining(
        replace(spec, loop=loop), model, records, BatchPlan(len(records), 4, 2, seed=0), z_weight=1e-5
    )
    frozen = {k: v.clone() for k, v in model.lm.state_dict().items()}
    paths = StagePaths(tmp_path / "checkpoints", tmp_path / "metrics.jsonl", tmp_path / "final")
    train(task, loop, paths, identity=stage)
    losses = [r["loss"] for r in read(paths.metrics)]
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < first - fall, (stage, losses)
    assert all(b <= a + 0.05 for a, b in zip(losses, losses[5:], strict=False)), losses
    lm_changed = any(not torch.equal(v, model.lm.state_dict()[k]) for k, v in frozen.items())
    assert lm_changed == (spec.trainable == "all")  # align trains SigLIP + adapter only
    reloaded = UniToken.from_pretrained(paths.final)
    torch.testing.assert_close(reloaded.adapter[0].weight, model.adapter[0].weight)


# --- pre-tokenisation of released-format conversations ----------------------------------------------
def test_pretokenize_keeps_good_records_and_logs_why_bad_ones_were_dropped(cfg, parts, tmp_path):
    import subprocess

    import pyarrow.parquet as pq

    from tests.conftest import REPO, stage_command
    from workflow_scripts.unitoken.records import TokenRecords
    from workflow_scripts.unitoken.vq import vq_config

    VQTokenizer(vq_config(cfg.unitoken.models.tiny_vq)).save_pretrained(tmp_path / "vq")
    data = tmp_path / "conversations"
    (data / "images").mkdir(parents=True)
    Image.new("RGB", (40, 40), "red").save(data / "images" / "red.png")
    (data / "images" / "broken.png").write_bytes(b"not a png")
    records = [
        {
            "conversations": [
                {"from": "human", "value": "<|image|>\nWhat colour?"},
                {"from": "gpt", "value": "Red."},
            ],
            "image": ["images/red.png"],
        },
        {
            "conversations": [{"from": "human", "value": "Draw red."}, {"from": "gpt", "value": "<|image|>"}],
            "image": "images/red.png",
        },
        {
            "conversations": [{"from": "human", "value": "Hello"}, {"from": "gpt", "value": "Hi."}],
            "image": [],
        },
        {
            "conversations": [
                {"from": "human", "value": "<|image|><|image|> same?"},
                {"from": "gpt", "value": "no"},
            ],
            "image": ["images/red.png"],
        },
        {
            "conversations": [{"from": "human", "value": "<|image|> what?"}, {"from": "gpt", "value": "x"}],
            "image": ["images/broken.png"],
        },
        {
            "conversations": [{"from": "human", "value": "<|image|> what?"}, {"from": "gpt", "value": "x"}],
            "image": ["images/missing.png"],
        },
    ]
    (data / "chat.json").write_text(json.dumps(records))
    index = tmp_path / "tokens" / "index.parquet"
    command = stage_command(
        "unitoken_pretokenize",
        tmp_path,
        {
            "shards": tmp_path / "no-shards",
            "lm": parts / "lm",
            "vision": parts / "vision",
            "vq": tmp_path / "vq",
        },
        outputs={"index": index},
        unitoken={"pretokenize": {"longcap": False, "conversations": [str(data / "chat.json")], "shards": 2}},
    )
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = pq.read_table(index).to_pylist()
    assert sorted(r["record_id"] for r in rows) == ["chat.json:0", "chat.json:1", "chat.json:2"]
    assert sorted({r["shard"] for r in rows}) == [0, 1]  # a 2-element job array wrote the shards
    rejected = [
        json.loads(line)
        for f in sorted(index.parent.glob("rejected-*.jsonl"))
        for line in f.read_text().splitlines()
    ]
    reasons = {r["record_id"]: r["reason"] for r in rejected}
    assert reasons["chat.json:3"] == "2 <|image|> placeholders but 1 images"
    assert reasons["chat.json:4"].startswith("unreadable image") and "broken.png" in reasons["chat.json:4"]
    assert "missing.png" in reasons["chat.json:5"]
    summary = json.loads((index.parent / "summary.json").read_text())
    assert summary["records"] == 3 and summary["rejected"] == 3
    loaded = TokenRecords(index.parent, ["conversation"])
    drawn = next(loaded[i] for i in range(len(loaded)) if loaded[i]["record_id"] == "chat.json:1")
    layout = UniToken.assemble(parts / "lm", parts / "vision").layout
    ids = drawn["input_ids"]
    start = ids.index(layout.ids.start_of_image)
    assert drawn["labels"][start] == layout.ids.start_of_image  # the drawn image is learnt
    assert len(drawn["images"]) == 1 and drawn["images"][0].size == (40, 40)


# --- the recipe in the DAG ------------------------------------------------------------------------------
def test_paper_preset_names_the_missing_unitoken_directory(tmp_path):
    from tests.test_config import PAPER_PATHS
    from workflow_scripts.config.loader import deep_merge
    from workflow_scripts.config.typed import ConfigError
    from workflow_scripts.dag.unitoken import UniTokenPaths

    user = deep_merge({"preset": "paper", **PAPER_PATHS}, {"unitoken": {"enabled": True}})
    layout = None  # checking the configured directories reads no path of the run
    with pytest.raises(ConfigError, match=r"'unitoken\.models\.lm' is not set"):
        UniTokenPaths(parse(resolve(user)), layout).check_paths()
    (tmp_path / "lm").mkdir()
    (tmp_path / "lm" / "config.json").write_text("{}")
    (tmp_path / "vision").mkdir()
    (tmp_path / "vision" / "config.json").write_text("{}")
    paths = {"lm": str(tmp_path / "lm"), "vision": str(tmp_path / "vision"), "vq": str(tmp_path / "lm")}
    cfg = parse(resolve(deep_merge(user, {"unitoken": {"models": paths}})))
    with pytest.raises(ConfigError, match=r"unitoken\.models\.vq.*missing vqvae/config\.json"):
        UniTokenPaths(cfg, layout).check_paths()


def test_unitoken_name_is_reserved_and_stage_hashes_are_per_stage():
    from workflow_scripts.catalog import stage_hash
    from workflow_scripts.config.typed import ConfigError

    with pytest.raises(ConfigError, match="'unitoken' names UniToken's system"):
        parse(
            resolve(
                {
                    "eval": {
                        "systems": {
                            "unitoken": {"captioner": "/m/a", "text_encoder": "/m/a", "decoder": "/m/b"}
                        }
                    }
                }
            )
        )
    base = resolve({})
    stages = base["unitoken"]["stages"]
    edited = [dict(s, loop=dict(s["loop"], steps=7)) if s["name"] == "joint" else s for s in stages]
    changed = resolve({"unitoken": {"stages": edited}})
    joint = {"unitoken_stage": "joint"}
    assert stage_hash(base, "unitoken_train", **joint) != stage_hash(changed, "unitoken_train", **joint)
    align = {"unitoken_stage": "align"}
    assert stage_hash(base, "unitoken_train", **align) == stage_hash(changed, "unitoken_train", **align)
    assert stage_hash(base, "pretrain_encoder") == stage_hash(changed, "pretrain_encoder")
    assert stage_hash(base, "unitoken_vq") == stage_hash(changed, "unitoken_vq")


def test_disabling_the_recipe_removes_its_stages_and_comparisons(tmp_path):
    from tests.conftest import snakemake, write_config

    write_config(tmp_path, {"preset": "tiny", "unitoken": {"enabled": False}})
    planned = snakemake(tmp_path, "all", "--dry-run").stdout
    assert "rule unitoken" not in planned and "wildcards: system=unitoken" not in planned
    assert "eval_judge.2a+2b.none" in planned and "unitoken__vs__" not in planned
    write_config(tmp_path, {"preset": "tiny"})
    planned = snakemake(tmp_path, "all", "--dry-run").stdout
    for rule in ("unitoken_vq", "unitoken_pretokenize", "unitoken_train", "unitoken_system"):
        assert f"rule {rule}:" in planned, rule
    assert "unitoken__vs__2a+2b" in planned

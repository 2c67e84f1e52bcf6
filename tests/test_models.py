"""Tiny models: the real library classes, saved and loaded back with from_pretrained(local_dir)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from workflow_scripts.config.typed import ConfigError
from workflow_scripts.models.conditioning import ConditioningSpec, condition, read, token_ids
from workflow_scripts.models.decoder import load_decoder
from workflow_scripts.models.encoder import IGNORE_INDEX, CaptionPrompt, load_encoder
from workflow_scripts.models.paths import DIFFUSERS_FILES, require_model_dir


def _images(n, size=64, seed=0):
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)) for _ in range(n)]


def test_tiny_encoder_is_a_real_qwen2_5_vl_that_round_trips(tiny_models, tmp_path):
    from transformers import Qwen2_5_VLForConditionalGeneration

    enc = load_encoder(tiny_models["encoder"])
    assert isinstance(enc.model, Qwen2_5_VLForConditionalGeneration)
    enc.model.save_pretrained(tmp_path / "copy")
    enc.processor.save_pretrained(tmp_path / "copy")
    again = load_encoder(tmp_path / "copy")
    for (name, a), (_, b) in zip(
        enc.model.state_dict().items(), again.model.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name
    text = "The picture contains two red circles."
    assert again.tokenizer(text)["input_ids"] == enc.tokenizer(text)["input_ids"]
    assert again.tokenizer.decode(enc.tokenizer(text)["input_ids"]) == text


def test_sft_batch_supervises_only_the_caption(tiny_models):
    enc = load_encoder(tiny_models["encoder"])
    captions = ["A flat digital illustration of one shape.", "Two blue squares."]
    prompt = CaptionPrompt("Describe the image.", instruction_first=False)
    batch = enc.sft_batch(_images(2), captions, prompt, max_caption_tokens=64)
    for row, labels, caption in zip(batch["input_ids"], batch["labels"], captions, strict=True):
        supervised = labels[labels != IGNORE_INDEX].tolist()
        expected = enc.tokenizer(caption, add_special_tokens=False)["input_ids"] + [enc.end_of_turn_id]
        assert supervised == expected
        start = (labels != IGNORE_INDEX).nonzero()[0].item()
        assert row[start : start + len(expected)].tolist() == expected
        assert (row[:start] == enc.image_token_id).sum() == 16  # 64 px, patch 8, merge 2 -> 4 x 4 tokens
    assert torch.isfinite(enc.model(**batch).loss)


RELEASE = ConditioningSpec(mode="release", role="generate", negative="a random ugly image", max_tokens=24)
FIXED = ConditioningSpec(mode="fixed_length", role="generate", negative="a random ugly image", max_tokens=24)
LONG_PROMPT = "three green stars in a row on a beige background next to a blue ring"


def test_release_conditioning_pads_negative_and_prompt_together_and_keeps_the_padding(tiny_models):
    """The release's steps, by hand: generation header, tokenizer.encode, pad_sequence of [negative,
    prompt] with pad_token_id, mask = ids != pad, one forward, projector on hidden_states[-1] of every
    position (no zeroing)."""
    enc = load_encoder(tiny_models["encoder"])
    dec = load_decoder(tiny_models["decoder"], llm_hidden_size=64, projector_hidden_size=32, projector_seed=1)
    pad = enc.tokenizer.pad_token_id
    for prompt in ("a red circle", LONG_PROMPT):
        rows = []
        for text in (RELEASE.negative, prompt):
            turn = [{"role": "generate", "content": [{"type": "text", "text": text}]}]
            chat = enc.processor.apply_chat_template(turn, tokenize=False, add_generation_prompt=True)
            assert chat.endswith("<|im_start|>assistant\n")
            rows.append(enc.tokenizer.encode(chat))
        width = max(map(len, rows))
        ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows])
        mask = (ids != pad).long()
        assert mask.sum(1).tolist() == [len(r) for r in rows]
        got_ids, got_mask = token_ids(enc, [RELEASE.negative, prompt], RELEASE)
        assert torch.equal(got_ids, ids) and torch.equal(got_mask, mask)
        with torch.no_grad():
            out = enc.model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
            expected = dec.projector.net(out.hidden_states[-1])
            embeds, negative = condition(enc, dec.projector, [prompt], RELEASE)
        torch.testing.assert_close(negative, expected[:1], rtol=0, atol=0)
        torch.testing.assert_close(embeds, expected[1:], rtol=0, atol=0)
        padded = mask == 0
        assert padded.any()  # one of the two rows is padded ...
        assert (expected[padded].abs().sum(-1) > 0).all()  # ... and its padded positions are not zeroed


def test_release_conditioning_of_a_batch_pads_to_its_longest_prompt(tiny_models):
    enc = load_encoder(tiny_models["encoder"])
    short = "a red circle"
    with torch.no_grad():
        alone = read(enc, [short], RELEASE, negative=RELEASE.negative)
        both = read(enc, [short, LONG_PROMPT], RELEASE, negative=RELEASE.negative)
        copies = read(enc, [short, short], RELEASE, negative=RELEASE.negative)
    assert both.hidden.shape[1] > alone.hidden.shape[1] and both.keep.all()
    # a prompt's own positions do not depend on the padding after them (causal attention) ...
    width = alone.hidden.shape[1]
    torch.testing.assert_close(both.hidden[0, :width], alone.hidden[0], rtol=1e-5, atol=1e-6)
    # ... but SD3 sees the longer padded sequence: batching different prompts changes the image
    assert both.negative_hidden.shape[1] == both.hidden.shape[1]
    torch.testing.assert_close(copies.hidden[1], alone.hidden[0], rtol=1e-5, atol=1e-6)


def test_fixed_length_conditioning_is_todays_reading(tiny_models):
    """fixed_length: the turn without generation header, padded/truncated to max_tokens, last hidden
    states with padded positions zeroed, before and after the projector; batch-independent."""
    enc = load_encoder(tiny_models["encoder"])
    dec = load_decoder(tiny_models["decoder"], llm_hidden_size=64, projector_hidden_size=32, projector_seed=1)
    prompts = ["a red circle", LONG_PROMPT]

    def by_hand(texts):
        turns = [[{"role": "generate", "content": [{"type": "text", "text": t}]}] for t in texts]
        chats = [enc.processor.apply_chat_template(turn) for turn in turns]
        enc.tokenizer.padding_side = "right"
        tokens = enc.tokenizer(
            chats,
            add_special_tokens=False,
            padding="max_length",
            truncation=True,
            max_length=24,
            return_tensors="pt",
        )
        keep = tokens["attention_mask"][..., None]
        hidden = enc.model.model(**tokens).last_hidden_state * keep
        return dec.projector.net(hidden) * keep

    with torch.no_grad():
        embeds, negative = condition(enc, dec.projector, prompts, FIXED)
        alone, _ = condition(enc, dec.projector, prompts[:1], FIXED)
        torch.testing.assert_close(embeds, by_hand(prompts), rtol=0, atol=0)
        torch.testing.assert_close(negative, by_hand([FIXED.negative]), rtol=0, atol=0)
    assert embeds.shape == (2, 24, dec.transformer.config.joint_attention_dim)
    torch.testing.assert_close(alone[0], embeds[0], rtol=1e-5, atol=1e-6)
    assert (embeds[0, -1] == 0).all()  # padded: zeroed


def test_a_merging_projector_concatenates_runs_of_states_into_fewer_tokens(tiny_models, tmp_path):
    """models.decoder.projector_merge m: each run of m consecutive reader states (a last partial run
    completed with absent ones) is concatenated, then the MLP; a token is kept when any state of its
    run is. It survives a save, and the DiT draws from the shorter reading."""
    from workflow_scripts.models.decoder import CaptionProjector

    torch.manual_seed(0)
    projector = CaptionProjector(in_features=3, hidden_features=5, out_features=4, merge=2)
    hidden = torch.randn(2, 5, 3)
    keep = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    out = projector(hidden, keep)
    assert out.shape == (2, 3, 4)
    absent = torch.zeros(3)
    row = hidden[1]
    runs = [torch.cat([row[0], row[1]]), torch.cat([row[2], row[3]]), torch.cat([row[4], absent])]
    torch.testing.assert_close(out[1], projector.net(torch.stack(runs)), rtol=1e-6, atol=1e-6)
    # first row: states 3-4 are absent, so its second run is state 2 beside a zero, its third is dropped
    torch.testing.assert_close(
        out[0, 1], projector.net(torch.cat([hidden[0, 2], absent])), rtol=1e-6, atol=1e-6
    )
    assert (out[0, 2] == 0).all()
    projector.save_pretrained(tmp_path / "projector")
    again = CaptionProjector.from_pretrained(tmp_path / "projector")
    assert again.config.merge == 2
    torch.testing.assert_close(again(hidden, keep), out, rtol=0, atol=0)

    enc = load_encoder(tiny_models["encoder"])
    dec = load_decoder(
        tiny_models["decoder"], llm_hidden_size=64, projector_hidden_size=32, projector_merge=4
    )
    with torch.no_grad():
        embeds, negative = condition(enc, dec.projector, ["a red circle"], FIXED)
    assert embeds.shape[1] == negative.shape[1] == FIXED.max_tokens // 4
    drawn = dec.generate(embeds, negative, seeds=[0], steps=2, guidance_scale=2.0, resolution=32)
    assert drawn[0].size == (32, 32)


def test_the_negative_alone_is_the_negative_of_a_batch(tiny_models):
    """RL reads the negative once with no prompt: the same tensor as read with prompts."""
    enc = load_encoder(tiny_models["encoder"])
    dec = load_decoder(tiny_models["decoder"], llm_hidden_size=64, projector_hidden_size=32, projector_seed=1)
    with torch.no_grad():
        for spec in (FIXED, RELEASE):
            embeds, negative = condition(enc, dec.projector, [], spec)
            _, with_prompt = condition(
                enc, dec.projector, ["a red circle"], spec
            )  # shorter than the negative
            assert embeds.shape[0] == 0 and negative.shape[0] == 1
            torch.testing.assert_close(negative, with_prompt, rtol=1e-5, atol=1e-6)


def test_presets_choose_the_conditioning_and_inference_of_the_release():
    from tests.test_config import PAPER_PATHS
    from workflow_scripts.config.loader import parse, resolve

    paper = parse(resolve({"preset": "paper", **PAPER_PATHS}))
    spec = ConditioningSpec.of(paper.models.decoder)
    assert (spec.mode, spec.role) == ("release", "generate")
    assert spec.negative == "Generate a random, low quality, ugly, blur, bad and anime, cartoon image."
    image, caption = paper.inference.image, paper.inference.caption
    assert (image.resolution, image.steps, image.guidance_scale) == (1024, 40, 5.0)
    assert (caption.temperature, caption.max_new_tokens) == (0.7, 512)
    assert caption.content_order == "instruction_first"
    assert caption.instruction.startswith("You are an expert vision-language model.  \nYour task is:")
    tiny = parse(resolve({"preset": "tiny"}))
    assert ConditioningSpec.of(tiny.models.decoder).mode == "fixed_length"
    with pytest.raises(ConfigError, match=r"models\.decoder\.conditioning.*is not one of"):
        resolve({"models": {"decoder": {"conditioning": "padded"}}})


def test_caption_prompt_puts_the_instruction_where_the_switch_says(tiny_models):
    enc = load_encoder(tiny_models["encoder"])
    first = enc.prompt(CaptionPrompt("Describe the image.", instruction_first=True))
    assert first.index("Describe the image.") < first.index("<|vision_start|>")
    assert first.startswith("<|im_start|>user\n") and first.endswith("<|im_start|>assistant\n")
    second = enc.prompt(CaptionPrompt("Describe the image.", instruction_first=False))
    assert second.index("<|vision_start|>") < second.index("Describe the image.")
    # SFT trains on the turn the captioner is asked with
    prompt = CaptionPrompt("Describe.", instruction_first=True)
    batch = enc.sft_batch(_images(1), ["Two blue squares."], prompt, 16)
    asked = enc.caption_inputs(_images(1), prompt)["input_ids"][0].tolist()
    assert batch["input_ids"][0, : len(asked)].tolist() == asked
    with pytest.raises(TypeError, match="content_order"):
        enc.prompt("Describe the image.")


def test_tiny_decoder_round_trips_and_samples_per_seed(tiny_models, tmp_path):
    from diffusers import SD3Transformer2DModel

    enc = load_encoder(tiny_models["encoder"])
    dec = load_decoder(tiny_models["decoder"], llm_hidden_size=64, projector_hidden_size=32, projector_seed=1)
    assert isinstance(dec.transformer, SD3Transformer2DModel)
    assert dec.pooled_empty.shape == (1, dec.transformer.config.pooled_projection_dim)
    dec.save(tmp_path / "trained", metadata={"test": True})
    again = load_decoder(tmp_path / "trained")
    with torch.no_grad():
        embeds, negative = condition(enc, dec.projector, ["a red circle", "a blue star"], FIXED, negative="")
    kwargs = {"steps": 3, "guidance_scale": 4.0, "resolution": 32}
    both = dec.generate(embeds, negative, seeds=[11, 12], **kwargs)
    second = again.generate(embeds[1:], negative, seeds=[12], **kwargs)
    assert np.array_equal(np.asarray(both[1]), np.asarray(second[0]))  # same seed + caption, any batch
    assert not np.array_equal(np.asarray(both[0]), np.asarray(both[1]))
    assert both[0].size == (32, 32)


def test_model_directory_errors_name_the_key(tmp_path, tiny_models):
    with pytest.raises(ConfigError, match=r"models\.encoder\.path' is not set"):
        require_model_dir(None, "models.encoder.path")
    with pytest.raises(ConfigError, match="does not exist"):
        require_model_dir(tmp_path / "absent", "models.encoder.path")
    with pytest.raises(ConfigError, match=r"missing model_index\.json"):
        require_model_dir(tiny_models["encoder"], "models.decoder.path", expect=DIFFUSERS_FILES)
    assert require_model_dir(tiny_models["decoder"], "models.decoder.path", expect=DIFFUSERS_FILES)


def test_vlm_drafter_and_llm_refiner_run_local_models(tiny_models, tmp_path):
    """The paper preset's captioners, exercised with tiny local models (their words are random)."""
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    from workflow_scripts.data import images
    from workflow_scripts.data.captioners import Caption, LLMRefiner, VLMDrafter
    from workflow_scripts.data.config import CaptionModelConfig

    tokenizer = AutoTokenizer.from_pretrained(tiny_models["encoder"])
    llm = Qwen2ForCausalLM(
        Qwen2Config(
            vocab_size=len(tokenizer),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=1,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    llm.save_pretrained(tmp_path / "llm")
    tokenizer.save_pretrained(tmp_path / "llm")
    items = [
        {"item_id": str(i), "data": images.png_bytes(im), "meta": "{}"} for i, im in enumerate(_images(3))
    ]
    items.append({"item_id": "bad", "data": b"not an image", "meta": "{}"})
    vlm = CaptionModelConfig(
        path=str(tiny_models["encoder"]), prompt="Describe.", max_new_tokens=8, temperature=1.0, batch_size=2
    )
    drafts = VLMDrafter(vlm, seed=0)(items)
    assert [d.text is not None for d in drafts] == [True, True, True, False]
    assert drafts[3].error.startswith("unreadable image")
    refine = CaptionModelConfig(
        path=str(tmp_path / "llm"), prompt="Rewrite.", max_new_tokens=6, temperature=1.0, batch_size=2
    )
    refined = LLMRefiner(refine, seed=0)(drafts)
    assert refined[3] == drafts[3]
    assert all(isinstance(r, Caption) and r.text for r in refined[:3])

"""Tiny models: the real library classes, saved and loaded back with from_pretrained(local_dir)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from workflow_scripts.config.typed import ConfigError
from workflow_scripts.models.decoder import load_decoder
from workflow_scripts.models.encoder import IGNORE_INDEX, load_encoder
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
    batch = enc.sft_batch(_images(2), captions, "Describe the image.", max_caption_tokens=64)
    for row, labels, caption in zip(batch["input_ids"], batch["labels"], captions, strict=True):
        supervised = labels[labels != IGNORE_INDEX].tolist()
        expected = enc.tokenizer(caption, add_special_tokens=False)["input_ids"] + [enc.end_of_turn_id]
        assert supervised == expected
        start = (labels != IGNORE_INDEX).nonzero()[0].item()
        assert row[start : start + len(expected)].tolist() == expected
        assert (row[:start] == enc.image_token_id).sum() == 16  # 64 px, patch 8, merge 2 -> 4 x 4 tokens
    assert torch.isfinite(enc.model(**batch).loss)


def test_caption_conditioning_does_not_depend_on_the_batch(tiny_models):
    enc = load_encoder(tiny_models["encoder"])
    with torch.no_grad():
        alone, mask_alone = enc.text_states(["a red circle"], "generate", 24)
        together, _ = enc.text_states(
            ["a red circle", "three green stars in a row on a beige background"], "generate", 24
        )
    assert alone.shape == (1, 24, enc.model.config.text_config.hidden_size)
    torch.testing.assert_close(alone[0], together[0], rtol=1e-5, atol=1e-6)
    padded = mask_alone[0] == 0
    assert padded.any() and torch.all(alone[0][padded] == 0)


def test_tiny_decoder_round_trips_and_samples_per_seed(tiny_models, tmp_path):
    from diffusers import SD3Transformer2DModel

    enc = load_encoder(tiny_models["encoder"])
    dec = load_decoder(tiny_models["decoder"], llm_hidden_size=64, projector_hidden_size=32, projector_seed=1)
    assert isinstance(dec.transformer, SD3Transformer2DModel)
    assert dec.pooled_empty.shape == (1, dec.transformer.config.pooled_projection_dim)
    dec.save(tmp_path / "trained", metadata={"test": True})
    again = load_decoder(tmp_path / "trained")
    with torch.no_grad():
        embeds = dec.projector(*enc.text_states(["a red circle", "a blue star"], "generate", 24))
        negative = dec.projector(*enc.text_states([""], "generate", 24))
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

"""UniToken: converting a released UniToken / Lumina-mGPT checkpoint directory, and upright photos."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import save_file
from torch import nn
from transformers import ChameleonConfig, ChameleonForConditionalGeneration, SiglipVisionModel

from workflow_scripts.config.loader import parse, resolve
from workflow_scripts.tiny import unitoken as tiny
from workflow_scripts.unitoken.convert import convert
from workflow_scripts.unitoken.model import UniToken

SHARDS = 2  # model-parallel shards of the released q/k norm affine


class ShardNorm(nn.Module):
    """Lumina-mGPT's ``ChameleonLayerNorm`` as the release runs it: statistics over head_dim, then
    the affine of each model-parallel shard applied to that shard's heads (repeat-interleaved)."""

    def __init__(self, heads: int, head_dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(SHARDS, head_dim))
        self.bias = nn.Parameter(torch.zeros(SHARDS, head_dim))
        self.per_shard = heads // SHARDS

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        hidden = F.layer_norm(hidden, hidden.shape[-1:], None, None, eps=1e-5)
        return hidden * self.weight.repeat_interleave(self.per_shard, 0) + self.bias.repeat_interleave(
            self.per_shard, 0
        )


def reference_lm(config: ChameleonConfig, released: dict[str, torch.Tensor]) -> nn.Module:
    """transformers' Chameleon with the release's per-shard q/k norms, loaded key for key."""
    lm = ChameleonForConditionalGeneration(config)
    head_dim = config.hidden_size // config.num_attention_heads
    for layer in lm.model.layers:
        layer.self_attn.q_norm = ShardNorm(config.num_attention_heads, head_dim)
        layer.self_attn.k_norm = ShardNorm(config.num_key_value_heads, head_dim)
    state = {k: v for k, v in released.items() if k.startswith(("model.", "lm_head."))}
    lm.load_state_dict(state, strict=True)
    return lm.eval()


def logits(lm: ChameleonForConditionalGeneration, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return lm.lm_head(lm.model(input_ids=ids).last_hidden_state)


@pytest.fixture(scope="module")
def released(tmp_path_factory):
    """A tiny directory in the released UniToken layout: ChameleonXLLMX config.json with two
    model-parallel shards, two safetensors files + index, tokenizer files; random weights."""
    cfg = parse(resolve({"preset": "tiny"}))
    root = tmp_path_factory.mktemp("released")
    models = cfg.unitoken.models
    corpus = ["a red circle at the top left", "two blue squares"] * 20
    tiny.build_lm(models.tiny_lm, models.tiny_vq, 0, corpus, root / "ours-lm")
    tiny.build_vision(models.tiny_vision, 0, root / "siglip")
    config = json.loads((root / "ours-lm" / "config.json").read_text())
    config.update(
        architectures=["ChameleonXLLMXForConditionalGeneration"],
        z_loss_weight=1e-5,
        mask_image_logits=True,
        model_parallel_size=SHARDS,
    )
    torch.manual_seed(1)
    lm = ChameleonForConditionalGeneration(ChameleonConfig(**config))
    weights = dict(lm.state_dict())
    heads = {"q": config["num_attention_heads"], "k": config["num_key_value_heads"]}
    head_dim = config["hidden_size"] // config["num_attention_heads"]
    for key in list(weights):
        for which in ("q", "k"):
            if f"self_attn.{which}_norm." in key:  # per shard, distinct rows: a wrong mapping shows
                assert weights[key].shape == (heads[which], head_dim)
                weights[key] = torch.randn(SHARDS, head_dim)
    vision = SiglipVisionModel.from_pretrained(root / "siglip")
    tower = getattr(vision, "vision_model", vision)
    weights.update({f"vit.{k}": torch.randn_like(v) for k, v in tower.state_dict().items()})
    width = config["hidden_size"]
    adapter = {
        "adapter.0.weight": torch.randn(width, vision.config.hidden_size),
        "adapter.0.bias": torch.randn(width),
        "adapter.2.weight": torch.randn(width, width),
        "adapter.2.bias": torch.randn(width),
    }
    weights.update(adapter)
    src = root / "UniToken-base-StageII"
    src.mkdir()
    (src / "config.json").write_text(json.dumps(config))
    keys = sorted(weights)
    halves = {"model-00001-of-00002.safetensors": keys[::2], "model-00002-of-00002.safetensors": keys[1::2]}
    for name, part in halves.items():
        save_file({k: weights[k].contiguous() for k in part}, src / name)
    index = {"weight_map": {k: name for name, part in halves.items() for k in part}}
    (src / "model.safetensors.index.json").write_text(json.dumps(index))
    from transformers import AutoTokenizer

    AutoTokenizer.from_pretrained(root / "ours-lm").save_pretrained(src)
    return {"src": src, "root": root, "weights": weights, "config": ChameleonConfig(**config)}


def test_released_unitoken_checkpoint_converts_and_gives_the_release_logits(released, tmp_path):
    out = tmp_path / "unitoken"
    assert convert(released["src"], out, vision=released["root"] / "siglip") == "unitoken"
    model = UniToken.from_pretrained(out).eval()
    weights = released["weights"]
    # the q/k norms became per head: each shard's affine repeated over its own heads, in order
    attention = model.lm.model.layers[0].self_attn
    q_norm = weights["model.layers.0.self_attn.q_norm.weight"]
    torch.testing.assert_close(attention.q_norm.weight.data, q_norm.repeat_interleave(2, 0))
    assert not torch.equal(attention.q_norm.weight.data, q_norm.repeat(2, 1))
    ids = torch.tensor([[0, *range(10, 40), model.layout.ids.start_of_image, model.layout.ids.new_line]])
    reference = reference_lm(released["config"], weights)
    torch.testing.assert_close(logits(model.lm, ids), logits(reference, ids), rtol=1e-5, atol=1e-5)
    # SigLIP tower and adapter: the release's vit.* and adapter.*, key for key
    tower = getattr(model.vision, "vision_model", model.vision)
    for key, value in tower.state_dict().items():
        torch.testing.assert_close(value, weights[f"vit.{key}"])
    torch.testing.assert_close(model.adapter[0].weight.data, weights["adapter.0.weight"])
    torch.testing.assert_close(model.adapter[2].bias.data, weights["adapter.2.bias"])
    assert (
        json.loads((out / "unitoken.json").read_text())["token_ids"]["new_line"] == model.layout.ids.new_line
    )


def test_released_lumina_mgpt_checkpoint_converts_to_an_lm_directory(released, tmp_path):
    src = tmp_path / "Lumina-mGPT-7B-512"
    src.mkdir()
    weights = {k: v for k, v in released["weights"].items() if not k.startswith(("vit.", "adapter."))}
    save_file(weights, src / "model.safetensors")
    (src / "config.json").write_text((released["src"] / "config.json").read_text())
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (released["src"] / name).exists():
            (src / name).write_bytes((released["src"] / name).read_bytes())
    assert convert(src, tmp_path / "lm") == "lm"
    lm = ChameleonForConditionalGeneration.from_pretrained(tmp_path / "lm").eval()
    ids = torch.tensor([[0, *range(50, 70)]])
    reference = reference_lm(released["config"], released["weights"])
    torch.testing.assert_close(logits(lm, ids), logits(reference, ids), rtol=1e-5, atol=1e-5)

    # without its VQ encoder the converter names the flag that supplies one
    bare = tmp_path / "bare"
    bare.mkdir()
    save_file({k: v for k, v in weights.items() if ".vqmodel." not in k}, bare / "model.safetensors")
    for f in src.iterdir():
        if f.suffix == ".json":
            (bare / f.name).write_bytes(f.read_bytes())
    with pytest.raises(ValueError, match="pass --vq"):
        convert(bare, tmp_path / "bare-out")
    assert not (tmp_path / "bare-out").exists()


def test_a_rotated_exif_photo_is_read_upright(tmp_path):
    from workflow_scripts.unitoken.pretokenize import _conversation_records

    stored = Image.new("RGB", (40, 20), "blue")  # as the camera stored it: lying on its side
    stored.paste(Image.new("RGB", (20, 20), "red"), (0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to view
    stored.save(tmp_path / "photo.jpg", exif=exif, quality=95)
    entry = {"conversations": [{"from": "human", "value": "<|image|>"}], "image": ["photo.jpg"]}
    (record,) = _conversation_records(tmp_path / "chat.json", 0, entry)
    image = record["images"][0]()
    assert image.size == (20, 40)  # upright: portrait
    top, bottom = image.getpixel((10, 5)), image.getpixel((10, 35))
    assert top[0] > 200 and top[2] < 60  # the stored left half (red) is the top once rotated
    assert bottom[2] > 200 and bottom[0] < 60

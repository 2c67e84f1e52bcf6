"""A UAE release checkpoint directory as an evaluation system (``eval.systems.<name>: {kind: uae-release}``).

The reference below follows the release's inference steps (``../shared/reference/uae-release.md``) with
transformers / diffusers / peft calls only, independent of ``workflow_scripts.models``: our system must
caption, condition and draw exactly as they do on the same weights and seed.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import ci_config, snakemake, write_config
from workflow_scripts.config.typed import ConfigError

STEPS, SIDE, NEW_TOKENS = 3, 64, 12
GUIDANCE = 5.0  # the release's; the tiny preset draws at 1.5, so the system is told it here
NEGATIVE = "Generate a random, low quality, ugly, blur, bad and anime, cartoon image."


@pytest.fixture(scope="module")
def release_dir(tiny_models, tmp_path_factory):
    from workflow_scripts.tiny.release import write_release

    return write_release(
        tmp_path_factory.mktemp("release") / "Checkpoints", tiny_models["encoder"], tiny_models["decoder"]
    )


def _image(seed=0):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (SIDE, SIDE, 3), dtype=np.uint8))


class Reference:
    """The release's inference, step by step (demo.py's loading, get_prompt_embeds, gen_prompt, gen_image)."""

    def __init__(self, root):
        from diffusers import StableDiffusion3Pipeline
        from peft import LoraConfig, PeftModel, get_peft_model
        from safetensors import safe_open
        from safetensors.torch import load_file
        from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration

        # the release's Qwen2_5_VLForConditionalGeneration subclass with a `projector` (Linear, GELU,
        # Linear) loads both from `llm`; a subclass misses transformers 5's key conversion of the legacy
        # layout, so the Qwen class loads and the projector is filled from the same file
        self.llm = Qwen2_5_VLForConditionalGeneration.from_pretrained(root / "llm")
        with safe_open(next((root / "llm").glob("*.safetensors")), framework="pt") as handle:
            weights = {n: handle.get_tensor(n) for n in handle.keys() if n.startswith("projector.")}  # noqa: SIM118
        hidden, width = weights["projector.0.weight"].shape
        self.llm.projector = torch.nn.Sequential(
            torch.nn.Linear(width, hidden),
            torch.nn.GELU(),
            torch.nn.Linear(hidden, weights["projector.2.weight"].shape[0]),
        )
        self.llm.projector.load_state_dict({k.removeprefix("projector."): v for k, v in weights.items()})
        self.llm.model = get_peft_model(
            self.llm.model,
            LoraConfig(r=32, lora_alpha=64, init_lora_weights="gaussian", target_modules="all-linear"),
        )
        state = {}
        for i in range(1, 4):
            state.update(load_file(root / "llm_lora" / f"model-0000{i}-of-00003.safetensors"))
        result = self.llm.load_state_dict(state, strict=False)
        assert not result.unexpected_keys  # every shard tensor landed
        self.llm.eval()
        self.processor = AutoProcessor.from_pretrained(root / "llm_model_preprocessor")

        pooled_pipe = StableDiffusion3Pipeline.from_pretrained(
            root / "SD3_model", text_encoder_3=None, tokenizer_3=None
        )
        with torch.no_grad():
            _, _, self.pooled, _ = pooled_pipe.encode_prompt(
                prompt="", prompt_2="", prompt_3="", do_classifier_free_guidance=False
            )
        self.pipe = StableDiffusion3Pipeline.from_pretrained(
            root / "SD3_model",
            transformer=None,
            text_encoder=None,
            text_encoder_2=None,
            text_encoder_3=None,
            tokenizer_3=None,
        )
        from diffusers import SD3Transformer2DModel

        self.pipe.transformer = PeftModel.from_pretrained(
            SD3Transformer2DModel.from_pretrained(root / "dit"), root / "dit_lora"
        )

    @torch.no_grad()
    def prompt_embeds(self, prompt: str):
        def input_ids(text):
            messages = [{"role": "generate", "content": [{"type": "text", "text": text}]}]
            chat = self.processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            return self.processor.tokenizer.encode(chat, return_tensors="pt")[0]

        pad = self.processor.tokenizer.pad_token_id
        ids = torch.nn.utils.rnn.pad_sequence(
            [input_ids(NEGATIVE), input_ids(prompt)], batch_first=True, padding_value=pad
        )
        out = self.llm(input_ids=ids, attention_mask=ids.ne(pad), output_hidden_states=True, return_dict=True)
        negative, positive = self.llm.projector(out.hidden_states[-1]).chunk(2, dim=0)
        return negative, positive

    @torch.no_grad()
    def caption(self, image, instruction: str, seed: int) -> str:
        messages = [{"role": "user", "content": [{"type": "text", "text": instruction}, {"type": "image"}]}]
        chat = self.processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        inputs = self.processor(text=[chat], images=[image], return_tensors="pt", padding=True)
        torch.manual_seed(seed)
        out = self.llm.generate(**inputs, max_new_tokens=NEW_TOKENS, do_sample=True, temperature=0.7)
        return self.processor.batch_decode(out[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)[
            0
        ]

    @torch.no_grad()
    def image(self, prompt: str, seed: int):
        negative, positive = self.prompt_embeds(prompt)
        return self.pipe(
            prompt_embeds=positive,
            negative_prompt_embeds=negative,
            pooled_prompt_embeds=self.pooled,
            negative_pooled_prompt_embeds=self.pooled,
            height=SIDE,
            width=SIDE,
            num_inference_steps=STEPS,
            guidance_scale=GUIDANCE,
            generator=torch.Generator(device="cpu").manual_seed(seed),
        ).images[0]


def _system(root):
    from workflow_scripts.config.loader import parse, resolve
    from workflow_scripts.eval.systems import load_system
    from workflow_scripts.models.conditioning import ConditioningSpec

    cfg = parse(
        resolve(
            {
                "inference": {
                    "image": {"steps": STEPS, "guidance_scale": GUIDANCE},
                    "caption": {"max_new_tokens": NEW_TOKENS},
                }
            }
        )
    )
    # the configured conditioning (tiny: fixed_length) must not apply to a release checkpoint
    configured = ConditioningSpec.of(cfg.models.decoder)
    assert configured.mode == "fixed_length"
    record = {"variant": "uae", "kind": "uae-release", "release": str(root)}
    system = load_system(record, cfg.inference, conditioning=configured, device="cpu", dtype=torch.float32)
    return system, cfg


def test_a_release_directory_is_a_system_that_captions_conditions_and_draws_as_the_release(release_dir):
    from workflow_scripts.models.conditioning import condition

    reference = Reference(release_dir)
    system, cfg = _system(release_dir)
    assert system.captioner is system.text_encoder  # one LLM captions and reads
    assert system.protocol() == {"conditioning": "release"}

    for prompt in ("a red circle", "three green stars in a row on a beige background next to a blue ring"):
        negative, positive = reference.prompt_embeds(prompt)
        with torch.no_grad():
            embeds, ours_negative = condition(
                system.text_encoder, system.decoder.projector, [prompt], system.conditioning
            )
        torch.testing.assert_close(embeds, positive, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(ours_negative, negative, rtol=1e-5, atol=1e-6)

    image = _image()
    expected = reference.caption(image, cfg.inference.caption.instruction, seed=7)
    assert system.caption(image, seed=7) == expected.strip()
    assert expected.strip()  # the tiny LLM says something

    prompt = "two blue squares"
    drawn = system.draw([prompt, prompt], [5, 6], SIDE)
    assert np.array_equal(np.asarray(drawn[0]), np.asarray(reference.image(prompt, 5)))
    assert np.array_equal(np.asarray(drawn[1]), np.asarray(reference.image(prompt, 6)))


def test_the_release_adapters_are_applied(release_dir):
    """Without the llm_lora the conditioning differs: the shards are really loaded (not silently ignored
    as strict=False would allow)."""
    from transformers import AutoProcessor

    from workflow_scripts.models.conditioning import condition
    from workflow_scripts.models.encoder import Encoder
    from workflow_scripts.models.release import load_release

    release = load_release(release_dir, key="eval.systems.uae.path")
    base = Encoder(
        type(release.encoder.model).from_pretrained(release_dir / "llm"),
        AutoProcessor.from_pretrained(release_dir / "llm_model_preprocessor"),
    )
    with torch.no_grad():
        adapted, _ = condition(
            release.encoder, release.decoder.projector, ["a red circle"], release.conditioning
        )
        plain, _ = condition(base, release.decoder.projector, ["a red circle"], release.conditioning)
    assert not torch.allclose(adapted, plain)


def test_a_broken_release_layout_names_the_folder_and_the_fix(release_dir, tmp_path):
    from workflow_scripts.models.release import check_layout, load_release

    key = "eval.systems.uae.path"
    broken = tmp_path / "no_dit_lora"
    shutil.copytree(release_dir, broken)
    shutil.rmtree(broken / "dit_lora")
    with pytest.raises(
        ConfigError, match=r"folder 'dit_lora' \(the DiT's peft adapter\) is missing.*Checkpoints"
    ):
        check_layout(broken, key)

    two = tmp_path / "two_shards"
    shutil.copytree(release_dir, two)
    (two / "llm_lora" / "model-00003-of-00003.safetensors").unlink()
    with pytest.raises(
        ConfigError, match=r"llm_lora: holds 2 safetensors shard\(s\).*exactly the three shards"
    ):
        load_release(two, key=key)

    with pytest.raises(ConfigError, match=rf"config key '{key}'.*does not exist|does not exist.*{key}"):
        check_layout(tmp_path / "absent", key)

    from safetensors.torch import load_file, save_file

    foreign = tmp_path / "foreign"
    shutil.copytree(release_dir, foreign)
    shard = foreign / "llm_lora" / "model-00001-of-00003.safetensors"
    save_file({f"llm_model.{k}": v for k, v in load_file(shard).items()}, shard)
    with pytest.raises(ConfigError, match=r"llm_lora: .* match no parameter.*llm_model\.model"):
        load_release(foreign, key=key)


def test_a_release_system_is_planned_on_every_benchmark(release_dir, tmp_path):
    config = ci_config(eval={"systems": {"uae": {"kind": "uae-release", "path": str(release_dir)}}})
    write_config(tmp_path, config)
    result = snakemake(tmp_path, "all", "-n")
    planned = result.stdout
    assert "rule eval_system:" in planned and "external=uae" in planned
    from workflow_scripts.config.loader import parse, resolve

    for bench in parse(resolve(config)).eval.benchmarks():
        assert f"system=uae, bench={bench}" in planned or f"bench={bench}, system=uae" in planned, bench

    broken = tmp_path / "broken"
    shutil.copytree(release_dir, broken)
    shutil.rmtree(broken / "dit")
    write_config(tmp_path, ci_config(eval={"systems": {"uae": {"kind": "uae-release", "path": str(broken)}}}))
    refused = snakemake(tmp_path, "all", "-n", check=False)
    assert refused.returncode != 0
    assert "folder 'dit'" in refused.stdout + refused.stderr


@pytest.mark.slow  # one launcher process
def test_eval_system_records_a_release_and_its_protocol(release_dir, tmp_path):
    import json
    import subprocess

    from tests.conftest import stage_command

    record_path = tmp_path / "uae.json"
    command = stage_command(
        "eval_system",
        tmp_path / "job",
        {},
        wildcards={"external": "uae"},
        outputs={"system": record_path},
        launcher={"kind": "inline"},
        eval={"systems": {"uae": {"kind": "uae-release", "path": str(release_dir)}}},
    )
    subprocess.run(command, check=True, capture_output=True)
    record = json.loads(record_path.read_text())
    assert record["kind"] == "uae-release" and record["release"] == str(release_dir.resolve())
    assert record["protocol"]["conditioning"] == "release"  # whatever models.decoder.conditioning says
    assert record["protocol"]["reader"] == "captioner"


LORA_Q = "model.base_model.model.language_model.layers.0.self_attn.q_proj.lora_A.default.weight"


@pytest.mark.parametrize(
    ("saved", "lands"),
    [
        (LORA_Q, LORA_Q),  # transformers >= 4.52 layout, peft-attached: as is
        ("model.base_model.model.layers.0.self_attn.q_proj.lora_A.default.weight", LORA_Q),  # < 4.52
        ("model.base_model.model.language_model.layers.0.self_attn.q_proj.lora_A.weight", LORA_Q),
        ("model.layers.0.self_attn.q_proj.weight", LORA_Q.replace("lora_A.default", "base_layer")),
        (
            "visual.blocks.0.attn.qkv.weight",
            "model.base_model.model.visual.blocks.0.attn.qkv.base_layer.weight",
        ),
        ("projector.0.weight", "projector.0.weight"),
        ("llm_model.model.layers.0.self_attn.q_proj.weight", None),
    ],
)
def test_llm_lora_keys_of_either_transformers_layout_land_on_their_parameter(saved, lands):
    from workflow_scripts.models.release import _target_key

    targets = {
        LORA_Q,
        LORA_Q.replace("lora_A.default", "base_layer"),
        "model.base_model.model.visual.blocks.0.attn.qkv.base_layer.weight",
        "projector.0.weight",
    }
    assert _target_key(saved, targets) == lands

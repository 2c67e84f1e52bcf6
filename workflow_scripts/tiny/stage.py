"""Stage entry: build one tiny-preset model with fixed-seed random weights and save it."""

from __future__ import annotations

from workflow_scripts import atomic, provenance
from workflow_scripts.harness.context import JobContext
from workflow_scripts.models.config import BACKBONES
from workflow_scripts.seeding import derive_seed
from workflow_scripts.tiny import uae as tiny
from workflow_scripts.tiny import unitoken as unitoken_tiny
from workflow_scripts.tiny.backbones import build_tiny


def build_tiny_model(ctx: JobContext) -> dict:
    component = ctx.spec.wildcards["component"]
    cfg = ctx.cfg
    out = ctx.output("model")
    # reward backbones stand in for published weights: the same whatever the run's seed (RewardTrainConfig)
    seed = cfg.reward_train.seed if component in BACKBONES else cfg.seed
    with atomic.directory(out) as tmp:
        if component == "encoder":
            synthetic = cfg.data.sources.synthetic
            corpus = tiny.caption_corpus(cfg.seed, synthetic.classes, synthetic.colors, synthetic.textures)
            tiny.build_encoder(cfg.models.encoder.tiny, cfg.seed, corpus, tmp)
        elif component == "decoder":
            tiny.build_decoder(cfg.models.decoder.tiny, cfg.seed, tmp)
        elif component == "unitoken_lm":
            synthetic = cfg.data.sources.synthetic
            corpus = tiny.caption_corpus(cfg.seed, synthetic.classes, synthetic.colors, synthetic.textures)
            models = cfg.unitoken.models
            unitoken_tiny.build_lm(
                models.tiny_lm, models.tiny_vq, derive_seed(cfg.seed, "tiny", component), corpus, tmp
            )
        elif component == "unitoken_vision":
            spec = cfg.unitoken.models.tiny_vision
            unitoken_tiny.build_vision(spec, derive_seed(cfg.seed, "tiny", component), tmp)
        elif component in BACKBONES:
            spec = getattr(cfg.models.reward, component).tiny
            build_tiny(component, spec, derive_seed(seed, "tiny", component), tmp)
        else:
            raise ValueError(f"no tiny model '{component}'")
        provenance.write(
            tmp / "provenance.json",
            provenance.record(
                stage=f"build_tiny_model/{component}",
                config_hash=ctx.config_hash,
                stage_hash=ctx.view_hash,
                seed=seed,
                inputs={},
            ),
        )
    return {"component": component, "path": str(out)}

import re
import sys

sys.path.insert(0, workflow.basedir)

from workflow_scripts.dag import Run
from workflow_scripts.dag.session import release_lock_on_hangup

release_lock_on_hangup()

# resolve preset <- config.yaml <- --config, validate against config.schema.json, check model dirs
# (all of them unless --config plan_only=true). Loading writes nothing: planning (-n) leaves results/ as
# it is; the resolved config every job reads is recorded in onstart, which only a real run calls.
RUN = Run.load(config, write=False)
LAYOUT = RUN.layout
ENV = "../envs/umm.yaml"


onstart:
    RUN.write_resolved_config()


# every stage runs through the same launcher (submitit: local, in-process or Slurm); params.launch
# and params.args arrive quoted word by word, every other path through :q (a path may hold a space)
LAUNCH = "python -m workflow_scripts.launch {params.launch} --stage-hash {params.stage_hash:q} > {log:q} 2>&1"
# warehouse ingests run here, never on the cluster: one writer at a time under the warehouse's file lock
INGEST = "python -m workflow_scripts.warehouse ingest {params.args} > {log:q} 2>&1"


wildcard_constraints:
    component="encoder|decoder|clip|longclip|dinov2|dinov3|unitoken_lm|unitoken_vision",
    backbone="clip|longclip|dinov2|dinov3",
    source="|".join(RUN.sources),
    phase="|".join(RUN.phases),
    variant="|".join(re.escape(v) for v in RUN.cfg.rl.variants),
    rl_stage="|".join(re.escape(s) for s in RUN.rl.stages) or "(?!)",
    system="|".join(re.escape(s) for s in RUN.eval.systems),
    external="|".join(re.escape(s) for s in RUN.eval.external_systems) or "(?!)",
    bench="|".join(RUN.eval.benchmarks) or "(?!)",
    train_stage="|".join(re.escape(s) for s in RUN.train_stages),
    unitoken_stage="|".join(re.escape(s) for s in RUN.unitoken.stages) or "(?!)",


# RUN.inputs leaves the model directories out of a plan-only DAG (--config plan_only=true)
def caption_inputs(wildcards):
    return RUN.inputs(
        {
            "raw": str(LAYOUT.raw(wildcards.source)),
            **RUN.caption_models(wildcards.source),
        }
    )


def pretrain_encoder_inputs(wildcards):
    return RUN.inputs({"base": RUN.base_model("encoder"), "shards": str(LAYOUT.shards)})


def pretrain_decoder_inputs(wildcards):
    return RUN.inputs(
        {
            "decoder": RUN.decoder_start(wildcards.phase),
            "encoder": str(LAYOUT.final("pretrain_encoder")),
            "shards": str(LAYOUT.shards),
        }
    )


def stage_model(stage):
    """The model an RL stage hands on: its validation-selected checkpoint, or its final export."""
    if not RUN.cfg.eval.selection.enabled:
        return str(LAYOUT.final(stage))
    return RUN.rl.selected_model(
        checkpoints.select_checkpoint.get(rl_stage=stage).output.selection
    )


def rl_encoder_inputs(wildcards):
    return RUN.inputs(RUN.rl.encoder_inputs(stage_model))


def rl_decoder_inputs(wildcards):
    return RUN.inputs(RUN.rl.decoder_inputs(wildcards.variant, stage_model))


# UniToken's inputs are functions: with the recipe disabled its rules are never asked for
def unitoken_pretokenize_inputs(wildcards):
    return RUN.inputs(RUN.unitoken.pretokenize_inputs())


def unitoken_train_inputs(wildcards):
    return RUN.inputs(RUN.unitoken.train_inputs(wildcards.unitoken_stage))


def unitoken_system_inputs(wildcards):
    return RUN.inputs(RUN.unitoken.system_inputs())


def variant_inputs(wildcards):
    return RUN.rl.variant_inputs(wildcards.variant, stage_model)


def selection_inputs(wildcards):
    return RUN.inputs(RUN.rl.selection_inputs(wildcards.rl_stage, stage_model))


def score_inputs(wildcards):
    return RUN.inputs(RUN.eval.score_inputs(wildcards.system, wildcards.bench))


def ingest_training_inputs(wildcards):
    return RUN.report.ingest_training_inputs(wildcards.train_stage)

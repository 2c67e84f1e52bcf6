import re
import sys

sys.path.insert(0, workflow.basedir)

from workflow_scripts.dag import Run
from workflow_scripts.dag.session import release_lock_on_hangup

release_lock_on_hangup()

# resolve preset <- config.yaml <- --config, validate against config.schema.json, check model dirs
RUN = Run.load(config)
LAYOUT = RUN.layout
ENV = "../envs/umm.yaml"

# every stage runs through the same launcher (submitit: local, in-process or Slurm)
LAUNCH = "python -m workflow_scripts.launch {params.launch} --stage-hash {params.stage_hash} > {log} 2>&1"
# warehouse ingests run here, never on the cluster: one writer at a time under the warehouse's file lock
INGEST = "python -m workflow_scripts.warehouse ingest {params.args} > {log} 2>&1"


wildcard_constraints:
    component="encoder|decoder|clip|longclip|dinov2|dinov3|unitoken_lm|unitoken_vision",
    source="|".join(RUN.sources),
    phase="|".join(RUN.phases),
    variant="|".join(re.escape(v) for v in RUN.cfg.rl.variants),
    rl_stage="|".join(re.escape(s) for s in RUN.rl_stages) or "(?!)",
    system="|".join(re.escape(s) for s in RUN.systems),
    external="|".join(re.escape(s) for s in RUN.external_systems) or "(?!)",
    bench="|".join(RUN.benchmarks) or "(?!)",
    train_stage="|".join(re.escape(s) for s in RUN.train_stages),
    unitoken_stage="|".join(re.escape(s) for s in RUN.unitoken_stages) or "(?!)",


def caption_inputs(wildcards):
    return {"raw": LAYOUT.raw(wildcards.source), **RUN.caption_models(wildcards.source)}


def decoder_start(wildcards):
    return RUN.decoder_start(wildcards.phase)


def stage_model(stage):
    """The model an RL stage hands on: its validation-selected checkpoint, or its final export."""
    if not RUN.cfg.eval.selection.enabled:
        return str(LAYOUT.final(stage))
    return RUN.selected_model(
        checkpoints.select_checkpoint.get(rl_stage=stage).output.selection
    )


def rl_encoder_inputs(wildcards):
    return RUN.rl_encoder_inputs(stage_model)


def rl_decoder_inputs(wildcards):
    return RUN.rl_decoder_inputs(wildcards.variant, stage_model)


# UniToken's inputs are functions: with the recipe disabled its rules are never asked for
def unitoken_pretokenize_inputs(wildcards):
    return RUN.unitoken_pretokenize_inputs()


def unitoken_train_inputs(wildcards):
    return RUN.unitoken_train_inputs(wildcards.unitoken_stage)


def unitoken_system_inputs(wildcards):
    return RUN.unitoken_system_inputs()


def variant_inputs(wildcards):
    return RUN.variant_inputs(wildcards.variant, stage_model)


def selection_inputs(wildcards):
    return RUN.selection_inputs(wildcards.rl_stage, stage_model)


def score_inputs(wildcards):
    return RUN.score_inputs(wildcards.system, wildcards.bench)


def ingest_training_inputs(wildcards):
    return RUN.ingest_training_inputs(wildcards.train_stage)

import re
import sys

sys.path.insert(0, workflow.basedir)

from workflow_scripts.dag import Run

# resolve preset <- config.yaml <- --config, validate against config.schema.json, check model dirs
RUN = Run.load(config)
LAYOUT = RUN.layout
ENV = "../envs/umm.yaml"

# every stage runs through the same launcher (submitit: local, in-process or Slurm)
LAUNCH = "python -m workflow_scripts.launch {params.launch} --stage-hash {params.stage_hash} > {log} 2>&1"


wildcard_constraints:
    component="encoder|decoder|clip|longclip|dinov2|dinov3",
    source="|".join(RUN.sources),
    phase="|".join(RUN.phases),
    variant="|".join(re.escape(v) for v in RUN.cfg.rl.variants),


def caption_inputs(wildcards):
    return {"raw": LAYOUT.raw(wildcards.source), **RUN.caption_models(wildcards.source)}


def decoder_start(wildcards):
    return RUN.decoder_start(wildcards.phase)


def rl_decoder_inputs(wildcards):
    return RUN.rl_decoder_inputs(wildcards.variant)


def variant_inputs(wildcards):
    return RUN.variant_inputs(wildcards.variant)

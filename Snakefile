# umm-pipeline: the UAE recipe as one DAG, from raw images to pretrained encoder and decoder.
# The Snakefile is a table of contents; rules/ declare stages, workflow_scripts/ computes.


from snakemake.utils import min_version

min_version("9.0")


configfile: "config.yaml"


include: "rules/common.smk"
include: "rules/models.smk"
include: "rules/data.smk"
include: "rules/pretrain.smk"


rule all:
    default_target: True
    input:
        RUN.final_targets(),

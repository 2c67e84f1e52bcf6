# umm-pipeline: the UAE and UniToken recipes as one DAG:
# data -> pretraining -> Unified-GRPO -> variants (+ UniToken's three stages) -> benchmarks -> DuckDB
# warehouse -> HTML report.
# The Snakefile is a table of contents; rules/ declare stages, workflow_scripts/ computes.


from snakemake.utils import min_version

min_version("9.0")


configfile: "config.yaml"


report: "reports/workflow.rst"


include: "rules/common.smk"
include: "rules/models.smk"
include: "rules/data.smk"
include: "rules/vae.smk"
include: "rules/reward.smk"
include: "rules/pretrain.smk"
include: "rules/rl_coldstart.smk"
include: "rules/rl_encoder.smk"
include: "rules/rl_decoder.smk"
include: "rules/rl_variants.smk"
include: "rules/select.smk"
include: "rules/unitoken.smk"
include: "rules/eval.smk"
include: "rules/warehouse.smk"
include: "rules/report.smk"


rule all:
    default_target: True
    input:
        RUN.final_targets(),

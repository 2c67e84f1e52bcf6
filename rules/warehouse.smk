rule ingest_data:
    input:
        manifest=LAYOUT.manifest,
    output:
        LAYOUT.ingested("data"),
    log:
        LAYOUT.log("ingest_data"),
    conda:
        ENV
    params:
        args=RUN.report.ingest_args("data"),
    shell:
        INGEST


rule ingest_training:
    input:
        unpack(ingest_training_inputs),
    output:
        LAYOUT.ingested("training/{train_stage}"),
    log:
        LAYOUT.log("ingest_training.{train_stage}"),
    conda:
        ENV
    params:
        args=RUN.report.ingest_args("training"),
    shell:
        INGEST


rule ingest_eval:
    input:
        records=LAYOUT.eval_records("{system}", "{bench}"),
        scores=LAYOUT.eval_scores("{system}", "{bench}"),
    output:
        LAYOUT.ingested("eval/{system}/{bench}"),
    log:
        LAYOUT.log("ingest_eval.{system}.{bench}"),
    conda:
        ENV
    params:
        args=RUN.report.ingest_args("eval"),
    shell:
        INGEST


rule ingest_judge:
    input:
        judgement=LAYOUT.eval_judgement("{first}", "{second}"),
    output:
        LAYOUT.ingested("judge/{first}__vs__{second}"),
    log:
        LAYOUT.log("ingest_judge.{first}.{second}"),
    conda:
        ENV
    params:
        args=RUN.report.ingest_args("judge"),
    shell:
        INGEST


rule ingest_run:
    input:
        **RUN.report.ingest_markers(),
        summary=LAYOUT.eval_summary,
    output:
        LAYOUT.ingested("run"),
    log:
        LAYOUT.log("ingest_run"),
    conda:
        ENV
    params:
        args=RUN.report.ingest_args("run"),
        run_dir=RUN.report.run_dir,
        stage_hash=RUN.stage_hash_of("ingest_run"),
    shell:
        "python -m workflow_scripts.warehouse ingest {params.args} --input run_dir={params.run_dir:q} > {log:q} 2>&1"

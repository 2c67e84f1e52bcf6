checkpoint select_checkpoint:
    input:
        unpack(selection_inputs),
    output:
        selection=LAYOUT.selection("{rl_stage}"),
    log:
        LAYOUT.log("select_checkpoint.{rl_stage}"),
    benchmark:
        LAYOUT.benchmark("select_checkpoint.{rl_stage}")
    conda:
        ENV
    threads: RUN.threads("select_checkpoint")
    params:
        stage_hash=RUN.stage_hash_of("select_checkpoint"),
        launch=RUN.launch_args("select_checkpoint"),
    shell:
        LAUNCH

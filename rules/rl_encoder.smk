rule rl_encoder:
    input:
        unpack(rl_encoder_inputs),
    output:
        model=directory(LAYOUT.final("rl_encoder")),
    log:
        LAYOUT.log("rl_encoder"),
    benchmark:
        LAYOUT.benchmark("rl_encoder")
    conda:
        ENV
    threads: RUN.threads("rl_encoder")
    params:
        stage_hash=RUN.stage_hash_of("rl_encoder"),
        launch=RUN.launch_args("rl_encoder"),
    shell:
        LAUNCH

rule rl_coldstart:
    input:
        **RUN.rl.coldstart_inputs(),
    output:
        model=directory(LAYOUT.final("rl_coldstart")),
    log:
        LAYOUT.log("rl_coldstart"),
    benchmark:
        LAYOUT.benchmark("rl_coldstart")
    conda:
        ENV
    threads: RUN.threads("rl_coldstart")
    params:
        stage_hash=RUN.stage_hash_of("rl_coldstart"),
        launch=RUN.launch_args("rl_coldstart"),
    shell:
        LAUNCH

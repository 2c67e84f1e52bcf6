rule rl_decoder:
    input:
        unpack(rl_decoder_inputs),
    output:
        model=directory(LAYOUT.final("rl_decoder_{variant}")),
    log:
        LAYOUT.log("rl_decoder.{variant}"),
    benchmark:
        LAYOUT.benchmark("rl_decoder.{variant}")
    conda:
        ENV
    threads: RUN.threads("rl_decoder")
    params:
        stage_hash=RUN.stage_hash_of("rl_decoder"),
        launch=RUN.launch_args("rl_decoder"),
    shell:
        LAUNCH

rule rl_variant:
    input:
        unpack(variant_inputs),
    output:
        variant=LAYOUT.variant("{variant}"),
    log:
        LAYOUT.log("rl_variant.{variant}"),
    benchmark:
        LAYOUT.benchmark("rl_variant.{variant}")
    conda:
        ENV
    threads: RUN.threads("rl_variant")
    params:
        stage_hash=RUN.stage_hash_of("rl_variant"),
        launch=RUN.launch_args("rl_variant"),
    shell:
        LAUNCH


rule rl:
    input:
        RUN.rl.targets(),

rule build_tiny_model:
    output:
        model=directory(LAYOUT.tiny_model("{component}")),
    log:
        LAYOUT.log("build_tiny_model.{component}"),
    benchmark:
        LAYOUT.benchmark("build_tiny_model.{component}")
    conda:
        ENV
    threads: RUN.threads("build_tiny_model")
    params:
        stage_hash=RUN.stage_hash_of("build_tiny_model"),
        launch=RUN.launch_args("build_tiny_model"),
    shell:
        LAUNCH

rule data_collect:
    output:
        raw=LAYOUT.raw("{source}"),
    log:
        LAYOUT.log("data_collect.{source}"),
    benchmark:
        LAYOUT.benchmark("data_collect.{source}")
    conda:
        ENV
    threads: RUN.threads("data_collect")
    params:
        stage_hash=RUN.stage_hash_of("data_collect"),
        launch=RUN.launch_args("data_collect"),
    shell:
        LAUNCH


rule data_caption:
    input:
        unpack(caption_inputs),
    output:
        captions=LAYOUT.captions("{source}"),
    log:
        LAYOUT.log("data_caption.{source}"),
    benchmark:
        LAYOUT.benchmark("data_caption.{source}")
    conda:
        ENV
    threads: RUN.threads("data_caption")
    params:
        stage_hash=RUN.stage_hash_of("data_caption"),
        launch=RUN.launch_args("data_caption"),
    shell:
        LAUNCH


rule data_build:
    input:
        **{f"raw_{s}": LAYOUT.raw(s) for s in RUN.sources},
        **{f"captions_{s}": LAYOUT.captions(s) for s in RUN.sources},
    output:
        shards=directory(LAYOUT.shards),
        manifest=LAYOUT.manifest,
    log:
        LAYOUT.log("data_build"),
    benchmark:
        LAYOUT.benchmark("data_build")
    conda:
        ENV
    threads: RUN.threads("data_build")
    params:
        stage_hash=RUN.stage_hash_of("data_build"),
        launch=RUN.launch_args("data_build"),
    shell:
        LAUNCH


rule data_rl_select:
    input:
        shards=LAYOUT.shards,
    output:
        rl=directory(LAYOUT.rl_data),
    log:
        LAYOUT.log("data_rl_select"),
    benchmark:
        LAYOUT.benchmark("data_rl_select")
    conda:
        ENV
    threads: RUN.threads("data_rl_select")
    params:
        stage_hash=RUN.stage_hash_of("data_rl_select"),
        launch=RUN.launch_args("data_rl_select"),
    shell:
        LAUNCH


rule data:
    input:
        RUN.data_targets(),

# The UniToken recipe: VQ tokenizer -> pre-tokenised records -> align -> joint -> instruct -> system.


rule unitoken_vq:
    input:
        shards=LAYOUT.shards,
    output:
        model=directory(LAYOUT.final("unitoken_vq")),
    log:
        LAYOUT.log("unitoken_vq"),
    benchmark:
        LAYOUT.benchmark("unitoken_vq")
    conda:
        ENV
    threads: RUN.threads("unitoken_vq")
    params:
        stage_hash=RUN.stage_hash_of("unitoken_vq"),
        launch=RUN.launch_args("unitoken_vq"),
    shell:
        LAUNCH


rule unitoken_pretokenize:
    input:
        unpack(unitoken_pretokenize_inputs),
    output:
        index=LAYOUT.unitoken_tokens,
    log:
        LAYOUT.log("unitoken_pretokenize"),
    benchmark:
        LAYOUT.benchmark("unitoken_pretokenize")
    conda:
        ENV
    threads: RUN.threads("unitoken_pretokenize")
    params:
        stage_hash=RUN.stage_hash_of("unitoken_pretokenize"),
        launch=RUN.launch_args("unitoken_pretokenize"),
    shell:
        LAUNCH


rule unitoken_train:
    input:
        unpack(unitoken_train_inputs),
    output:
        model=directory(LAYOUT.final("unitoken_{unitoken_stage}")),
    log:
        LAYOUT.log("unitoken_train.{unitoken_stage}"),
    benchmark:
        LAYOUT.benchmark("unitoken_train.{unitoken_stage}")
    conda:
        ENV
    threads: RUN.threads("unitoken_train")
    params:
        stage_hash=RUN.stage_hash_of("unitoken_train"),
        launch=RUN.launch_args("unitoken_train"),
    shell:
        LAUNCH


rule unitoken_system:
    input:
        unpack(unitoken_system_inputs),
    output:
        system=LAYOUT.variant("unitoken"),
    log:
        LAYOUT.log("unitoken_system"),
    benchmark:
        LAYOUT.benchmark("unitoken_system")
    conda:
        ENV
    threads: RUN.threads("unitoken_system")
    params:
        stage_hash=RUN.stage_hash_of("unitoken_system"),
        launch=RUN.launch_args("unitoken_system"),
    shell:
        LAUNCH


rule unitoken:
    input:
        RUN.unitoken.targets(),

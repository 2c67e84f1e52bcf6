rule pretrain_encoder:
    input:
        unpack(pretrain_encoder_inputs),
    output:
        model=directory(LAYOUT.final("pretrain_encoder")),
    log:
        LAYOUT.log("pretrain_encoder"),
    benchmark:
        LAYOUT.benchmark("pretrain_encoder")
    conda:
        ENV
    threads: RUN.threads("pretrain_encoder")
    params:
        stage_hash=RUN.stage_hash_of("pretrain_encoder"),
        launch=RUN.launch_args("pretrain_encoder"),
    shell:
        LAUNCH


rule pretrain_decoder:
    input:
        unpack(pretrain_decoder_inputs),
    output:
        model=directory(LAYOUT.final("pretrain_decoder_{phase}")),
    log:
        LAYOUT.log("pretrain_decoder.{phase}"),
    benchmark:
        LAYOUT.benchmark("pretrain_decoder.{phase}")
    conda:
        ENV
    threads: RUN.threads("pretrain_decoder")
    params:
        stage_hash=RUN.stage_hash_of("pretrain_decoder"),
        launch=RUN.launch_args("pretrain_decoder"),
    shell:
        LAUNCH


rule pretrain:
    input:
        RUN.pretrain_targets(),

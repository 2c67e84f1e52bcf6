# The tiny reward backbones, trained on the data stage's images before any reward or benchmark reads them.


rule reward_train:
    input:
        base=LAYOUT.tiny_model("{backbone}"),
        shards=LAYOUT.shards,
    output:
        model=directory(LAYOUT.final("reward_{backbone}")),
    log:
        LAYOUT.log("reward_train.{backbone}"),
    benchmark:
        LAYOUT.benchmark("reward_train.{backbone}")
    conda:
        ENV
    threads: RUN.threads("reward_train")
    params:
        stage_hash=RUN.stage_hash_of("reward_train"),
        launch=RUN.launch_args("reward_train"),
    shell:
        LAUNCH

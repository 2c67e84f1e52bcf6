# The tiny decoder's VAE, trained on the data stage's images before decoder pretraining.


rule vae_train:
    input:
        decoder=LAYOUT.tiny_model("decoder"),
        shards=LAYOUT.shards,
    output:
        model=directory(LAYOUT.final("vae_train")),
    log:
        LAYOUT.log("vae_train"),
    benchmark:
        LAYOUT.benchmark("vae_train")
    conda:
        ENV
    threads: RUN.threads("vae_train")
    params:
        stage_hash=RUN.stage_hash_of("vae_train"),
        launch=RUN.launch_args("vae_train"),
    shell:
        LAUNCH

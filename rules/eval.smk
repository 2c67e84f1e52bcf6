rule eval_items:
    input:
        shards=LAYOUT.shards,
    output:
        item_set=directory(LAYOUT.eval_items("{bench}")),
    log:
        LAYOUT.log("eval_items.{bench}"),
    benchmark:
        LAYOUT.benchmark("eval_items.{bench}")
    conda:
        ENV
    threads: RUN.threads("eval_items")
    params:
        stage_hash=RUN.stage_hash_of("eval_items"),
        launch=RUN.launch_args("eval_items"),
    shell:
        LAUNCH


rule eval_system:
    output:
        system=LAYOUT.variant("{external}"),
    log:
        LAYOUT.log("eval_system.{external}"),
    benchmark:
        LAYOUT.benchmark("eval_system.{external}")
    conda:
        ENV
    threads: RUN.threads("eval_system")
    params:
        stage_hash=RUN.stage_hash_of("eval_system"),
        launch=RUN.launch_args("eval_system"),
    shell:
        LAUNCH


rule eval_generate:
    input:
        system=LAYOUT.variant("{system}"),
        item_set=LAYOUT.eval_items("{bench}"),
    output:
        generated=LAYOUT.eval_generated("{system}", "{bench}"),
    log:
        LAYOUT.log("eval_generate.{system}.{bench}"),
    benchmark:
        LAYOUT.benchmark("eval_generate.{system}.{bench}")
    conda:
        ENV
    threads: RUN.threads("eval_generate")
    params:
        stage_hash=RUN.stage_hash_of("eval_generate"),
        launch=RUN.launch_args("eval_generate"),
    shell:
        LAUNCH


rule eval_score:
    input:
        unpack(score_inputs),
    output:
        records=LAYOUT.eval_records("{system}", "{bench}"),
        scores=LAYOUT.eval_scores("{system}", "{bench}"),
    log:
        LAYOUT.log("eval_score.{system}.{bench}"),
    benchmark:
        LAYOUT.benchmark("eval_score.{system}.{bench}")
    conda:
        ENV
    threads: RUN.threads("eval_score")
    params:
        stage_hash=RUN.stage_hash_of("eval_score"),
        launch=RUN.launch_args("eval_score"),
    shell:
        LAUNCH


rule eval_judge:
    input:
        first=LAYOUT.eval_records("{first}", "unified_bench"),
        second=LAYOUT.eval_records("{second}", "unified_bench"),
        item_set=LAYOUT.eval_items("unified_bench"),
    output:
        judgement=LAYOUT.eval_judgement("{first}", "{second}"),
    log:
        LAYOUT.log("eval_judge.{first}.{second}"),
    benchmark:
        LAYOUT.benchmark("eval_judge.{first}.{second}")
    conda:
        ENV
    threads: RUN.threads("eval_judge")
    params:
        stage_hash=RUN.stage_hash_of("eval_judge"),
        launch=RUN.launch_args("eval_judge"),
    shell:
        LAUNCH


rule eval_summary:
    input:
        **RUN.eval.summary_inputs(),
    output:
        summary=LAYOUT.eval_summary,
    log:
        LAYOUT.log("eval_summary"),
    benchmark:
        LAYOUT.benchmark("eval_summary")
    conda:
        ENV
    threads: RUN.threads("eval_summary")
    params:
        stage_hash=RUN.stage_hash_of("eval_summary"),
        launch=RUN.launch_args("eval_summary"),
    shell:
        LAUNCH


rule eval:
    input:
        RUN.eval.targets(),

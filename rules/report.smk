rule report_dag:
    output:
        report(
            LAYOUT.rulegraph,
            caption="../reports/captions/dag.rst",
            category="Workflow",
        ),
    log:
        LAYOUT.log("report_dag"),
    conda:
        ENV
    params:
        stage_hash=RUN.stage_hash_of("report_dag"),
        config=RUN.config_path,
        snakefile=workflow.main_snakefile,
    shell:
        "python -m workflow_scripts.report dag --snakefile {params.snakefile} --configfile {params.config} "
        "--out {output} > {log} 2>&1"


rule report:
    input:
        ingested=LAYOUT.ingested("run"),
        dag=LAYOUT.rulegraph,
    output:
        report(
            LAYOUT.report, caption="../reports/captions/report.rst", category="Report"
        ),
    log:
        LAYOUT.log("report"),
    conda:
        ENV
    params:
        db=RUN.warehouse_path,
        run=RUN.cfg.run_name,
        run_dir=RUN.run_dir,
    shell:
        "python -m workflow_scripts.report run --db {params.db} --run {params.run} --run-dir {params.run_dir} "
        "--dag {input.dag} --out {output} > {log} 2>&1"


rule report_index:
    input:
        report=LAYOUT.report,
    output:
        RUN.index_path,
    log:
        LAYOUT.log("report_index"),
    conda:
        ENV
    params:
        db=RUN.warehouse_path,
        entry=f"{RUN.cfg.run_name}={LAYOUT.report.relative_to(RUN.cfg.results_root)}",
    shell:
        "python -m workflow_scripts.report index --db {params.db} --out {output} --report {params.entry} > {log} 2>&1"

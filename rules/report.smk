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
        "python -m workflow_scripts.report dag --snakefile {params.snakefile:q} --configfile {params.config:q} "
        "--out {output:q} > {log:q} 2>&1"


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
        db=RUN.report.warehouse_path,
        run=RUN.cfg.run_name,
        run_dir=RUN.report.run_dir,
    shell:
        "python -m workflow_scripts.report run --db {params.db:q} --run {params.run:q} --run-dir {params.run_dir:q} "
        "--dag {input.dag:q} --out {output:q} > {log:q} 2>&1"


rule report_index:
    input:
        report=LAYOUT.report,
    output:
        RUN.report.index_path,
    log:
        LAYOUT.log("report_index"),
    conda:
        ENV
    params:
        db=RUN.report.warehouse_path,
        entry=f"{RUN.cfg.run_name}={LAYOUT.report.relative_to(RUN.cfg.results_root)}",
    shell:
        "python -m workflow_scripts.report index --db {params.db:q} --out {output:q} --report {params.entry:q} > {log:q} 2>&1"

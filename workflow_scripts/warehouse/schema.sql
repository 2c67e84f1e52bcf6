-- umm-pipeline warehouse, schema version 3: the only DDL (applied by workflow_scripts.warehouse.db).
-- Every table has a primary key; every ingest deletes its slice and inserts it again in one
-- transaction, so re-running an ingest never duplicates rows.

CREATE TABLE IF NOT EXISTS runs (
    run_id VARCHAR PRIMARY KEY,       -- <run_name>: one run directory
    preset VARCHAR,
    config_hash VARCHAR,
    config JSON,                      -- the resolved config
    config_diff JSON,                 -- keys whose value differs from the preset: {key: [preset, run]}
    git_commit VARCHAR,
    git_dirty BOOLEAN,
    packages JSON,
    host VARCHAR,
    seed BIGINT,
    started_at TIMESTAMP,
    finished_at TIMESTAMP,
    wall_seconds DOUBLE,              -- first job start to last job end
    job_seconds DOUBLE,               -- sum of every job's wall time
    gpu_hours DOUBLE                  -- sum of job wall time x GPUs asked for
);

CREATE TABLE IF NOT EXISTS stages (
    run_id VARCHAR,
    stage VARCHAR,                    -- e.g. pretrain_decoder/lowres
    rule VARCHAR,
    stage_hash VARCHAR,
    inputs JSON,                      -- {name: {path, fingerprint}}
    output VARCHAR,
    status VARCHAR,
    wall_seconds DOUBLE,
    max_rss_mb DOUBLE,
    PRIMARY KEY (run_id, stage)
);

CREATE TABLE IF NOT EXISTS jobs (
    run_id VARCHAR,
    job_id VARCHAR,
    name VARCHAR,
    launcher VARCHAR,                 -- local / inline / slurm
    state VARCHAR,
    array_index INTEGER,
    nodes INTEGER,
    tasks INTEGER,
    gpus_per_node INTEGER,
    node_list VARCHAR,
    exit_code VARCHAR,
    submitted_at TIMESTAMP,
    ended_at TIMESTAMP,
    elapsed_seconds DOUBLE,           -- summed over every run of a requeued job (sacct -D)
    requested_tres VARCHAR,
    log_folder VARCHAR,
    restarts INTEGER,                 -- times Slurm requeued the job (preemption, node failure, USR2)
    PRIMARY KEY (run_id, job_id)
);
-- version 2 (jobs.restarts), for a database created by version 1; a no-op on one created above
ALTER TABLE jobs ADD COLUMN IF NOT EXISTS restarts INTEGER;

CREATE TABLE IF NOT EXISTS checkpoints (
    run_id VARCHAR,
    stage VARCHAR,
    step INTEGER,
    path VARCHAR,
    identity VARCHAR,
    fingerprint VARCHAR,              -- of the checkpoint's model export
    selected BOOLEAN,                 -- picked by validation (RL stages)
    selection_metric VARCHAR,
    selection_value DOUBLE,
    PRIMARY KEY (run_id, stage, step)
);

CREATE TABLE IF NOT EXISTS train_metrics (
    run_id VARCHAR,
    stage VARCHAR,
    step INTEGER,
    metric VARCHAR,
    value DOUBLE,
    PRIMARY KEY (run_id, stage, step, metric)
);

CREATE TABLE IF NOT EXISTS data_images (
    run_id VARCHAR,
    image_id VARCHAR,
    source VARCHAR,
    split VARCHAR,
    verdict VARCHAR,
    reason VARCHAR,
    caption_words INTEGER,
    width INTEGER,
    height INTEGER,
    PRIMARY KEY (run_id, image_id)
);

CREATE TABLE IF NOT EXISTS eval_samples (
    run_id VARCHAR,
    system VARCHAR,
    benchmark VARCHAR,
    sample_key VARCHAR,               -- item id, sample index, rotation
    item_id VARCHAR,
    record JSON,                      -- the scored per-sample record (caption, output image, scores, ...)
    PRIMARY KEY (run_id, system, benchmark, sample_key)
);

CREATE TABLE IF NOT EXISTS eval_scores (
    run_id VARCHAR,
    system VARCHAR,
    benchmark VARCHAR,
    metric VARCHAR,                   -- overall, per task, per backbone avg/min/max
    value DOUBLE,
    PRIMARY KEY (run_id, system, benchmark, metric)
);

-- version 3: the protocol each system and each score followed (what the report's protocol table shows)
CREATE TABLE IF NOT EXISTS systems (
    run_id VARCHAR,
    system VARCHAR,
    protocol JSON,                    -- {reader, coldstart, conditioning}: the record's "protocol" mapping
    record JSON,                      -- the whole variants/<system>.json record
    PRIMARY KEY (run_id, system)
);

CREATE TABLE IF NOT EXISTS eval_protocols (
    run_id VARCHAR,
    system VARCHAR,
    benchmark VARCHAR,
    protocol JSON,                    -- {benchmark_protocol, detector, judge, deviations: [...]}
    PRIMARY KEY (run_id, system, benchmark)
);

CREATE TABLE IF NOT EXISTS judgements (
    run_id VARCHAR,
    system VARCHAR,
    baseline VARCHAR,
    judge VARCHAR,
    win DOUBLE,
    tie DOUBLE,
    loss DOUBLE,
    items INTEGER,
    PRIMARY KEY (run_id, system, baseline, judge)
);

CREATE TABLE IF NOT EXISTS paper_tables (
    table_name VARCHAR,
    method VARCHAR,
    metric VARCHAR,
    value DOUBLE,
    PRIMARY KEY (table_name, method, metric)
);

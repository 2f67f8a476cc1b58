-- Fusillade schema, PostgreSQL flavour. Same tables, columns and meaning as sqlite/0001_init.sql;
-- timestamps are timestamptz. Never edit this file once released: add a new numbered migration
-- (in step with sqlite/).

CREATE TABLE files (
    seq          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id           TEXT        NOT NULL UNIQUE,
    owner        TEXT        NOT NULL,
    filename     TEXT        NOT NULL,
    purpose      TEXT        NOT NULL CHECK (purpose IN ('batch', 'batch_output', 'batch_error')),
    -- 'uploading' files are invisible; touched_at shows the upload is still alive.
    status       TEXT        NOT NULL CHECK (status IN ('uploading', 'processed')),
    bytes        BIGINT      NOT NULL DEFAULT 0,
    line_count   BIGINT      NOT NULL DEFAULT 0,
    content_hash TEXT,
    batch_id     TEXT,
    created_at   TIMESTAMPTZ NOT NULL,
    touched_at   TIMESTAMPTZ NOT NULL,
    expires_at   TIMESTAMPTZ,
    deleted_at   TIMESTAMPTZ
);
CREATE INDEX files_by_owner ON files (owner, seq);
CREATE INDEX files_uploading ON files (touched_at) WHERE status = 'uploading';

CREATE TABLE templates (
    id        BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    file_seq  BIGINT NOT NULL,
    line      BIGINT NOT NULL,
    custom_id TEXT   NOT NULL,
    url       TEXT   NOT NULL,
    model     TEXT   NOT NULL,
    body      TEXT   NOT NULL,
    UNIQUE (file_seq, line)
);

CREATE TABLE batches (
    seq               BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id                TEXT        NOT NULL UNIQUE,
    owner             TEXT        NOT NULL,
    input_file_id     TEXT        NOT NULL,
    endpoint          TEXT        NOT NULL,
    completion_window TEXT,
    metadata          TEXT,
    status            TEXT        NOT NULL CHECK (status IN ('validating', 'failed', 'in_progress',
                          'finalizing', 'completed', 'expired', 'cancelling', 'cancelled')),
    output_file_id    TEXT        NOT NULL,
    error_file_id     TEXT        NOT NULL,
    errors            TEXT,
    total             BIGINT      NOT NULL DEFAULT 0,
    pending           BIGINT      NOT NULL DEFAULT 0,
    running           BIGINT      NOT NULL DEFAULT 0,
    completed         BIGINT      NOT NULL DEFAULT 0,
    failed            BIGINT      NOT NULL DEFAULT 0,
    cancelled         BIGINT      NOT NULL DEFAULT 0,
    expired           BIGINT      NOT NULL DEFAULT 0,
    created_at        TIMESTAMPTZ NOT NULL,
    in_progress_at    TIMESTAMPTZ,
    expires_at        TIMESTAMPTZ,
    finalizing_at     TIMESTAMPTZ,
    completed_at      TIMESTAMPTZ,
    failed_at         TIMESTAMPTZ,
    expired_at        TIMESTAMPTZ,
    cancelling_at     TIMESTAMPTZ,
    cancelled_at      TIMESTAMPTZ
);
CREATE INDEX batches_by_owner ON batches (owner, seq);
CREATE INDEX batches_unfinished ON batches (expires_at) WHERE status IN ('in_progress', 'cancelling');

CREATE TABLE batch_models (
    batch_seq BIGINT NOT NULL,
    model     TEXT   NOT NULL,
    PRIMARY KEY (batch_seq, model)
);

CREATE TABLE requests (
    id                  BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    batch_seq           BIGINT  NOT NULL,
    template_id         BIGINT  NOT NULL,
    line                BIGINT  NOT NULL,
    model               TEXT    NOT NULL,
    -- The batch deadline in ms since the epoch, or the largest bigint for none: the claim order key.
    deadline            BIGINT  NOT NULL,
    state               TEXT    NOT NULL CHECK (state IN ('pending', 'running', 'completed',
                            'failed', 'cancelled', 'expired')),
    not_before          TIMESTAMPTZ,
    attempts            INTEGER NOT NULL DEFAULT 0,
    daemon_id           TEXT,
    lease               BIGINT,
    started_at          TIMESTAMPTZ,
    finished_at         TIMESTAMPTZ,
    status_code         INTEGER,
    response            TEXT,
    upstream_request_id TEXT,
    error_code          TEXT,
    error_message       TEXT
);
CREATE INDEX requests_claimable ON requests (model, deadline, id)
    WHERE state = 'pending' AND not_before IS NULL;
CREATE INDEX requests_retry_due ON requests (not_before)
    WHERE state = 'pending' AND not_before IS NOT NULL;
CREATE INDEX requests_running ON requests (model, daemon_id) WHERE state = 'running';
CREATE INDEX requests_by_batch ON requests (batch_seq, line);
-- A hot queue: keep statistics fresh so the planner keeps using the partial indexes.
ALTER TABLE requests SET (autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 50000,
    autovacuum_analyze_scale_factor = 0, autovacuum_analyze_threshold = 50000);

CREATE TABLE daemons (
    id                TEXT        PRIMARY KEY,
    hostname          TEXT        NOT NULL,
    pid               BIGINT      NOT NULL,
    version           TEXT        NOT NULL,
    status            TEXT        NOT NULL CHECK (status IN ('running', 'stopped', 'dead')),
    started_at        TIMESTAMPTZ NOT NULL,
    last_heartbeat    TIMESTAMPTZ NOT NULL,
    stopped_at        TIMESTAMPTZ,
    requests_finished BIGINT      NOT NULL DEFAULT 0
);

-- Fusillade schema, SQLite flavour. Timestamps are INTEGER milliseconds since the Unix epoch.
-- Never edit this file once released: add a new numbered migration (in step with postgres/).

CREATE TABLE files (
    seq          INTEGER PRIMARY KEY,
    id           TEXT    NOT NULL UNIQUE,
    owner        TEXT    NOT NULL,
    filename     TEXT    NOT NULL,
    purpose      TEXT    NOT NULL CHECK (purpose IN ('batch', 'batch_output', 'batch_error')),
    -- 'uploading' files are invisible; an upload that fails or dies leaves one to sweep.
    status       TEXT    NOT NULL CHECK (status IN ('uploading', 'processed')),
    bytes        INTEGER NOT NULL DEFAULT 0,
    line_count   INTEGER NOT NULL DEFAULT 0,
    content_hash TEXT,
    batch_id     TEXT,
    created_at   INTEGER NOT NULL,
    expires_at   INTEGER,
    deleted_at   INTEGER
);
CREATE INDEX files_by_owner ON files (owner, seq);

CREATE TABLE templates (
    id        INTEGER PRIMARY KEY,
    file_seq  INTEGER NOT NULL,
    line      INTEGER NOT NULL,
    custom_id TEXT    NOT NULL,
    url       TEXT    NOT NULL,
    model     TEXT    NOT NULL,
    body      TEXT    NOT NULL,
    UNIQUE (file_seq, line)
);

CREATE TABLE batches (
    seq               INTEGER PRIMARY KEY,
    id                TEXT    NOT NULL UNIQUE,
    owner             TEXT    NOT NULL,
    input_file_id     TEXT    NOT NULL,
    endpoint          TEXT    NOT NULL,
    completion_window TEXT,
    metadata          TEXT,
    status            TEXT    NOT NULL CHECK (status IN ('validating', 'failed', 'in_progress',
                          'finalizing', 'completed', 'expired', 'cancelling', 'cancelled')),
    output_file_id    TEXT    NOT NULL,
    error_file_id     TEXT    NOT NULL,
    errors            TEXT,
    total             INTEGER NOT NULL DEFAULT 0,
    pending           INTEGER NOT NULL DEFAULT 0,
    running           INTEGER NOT NULL DEFAULT 0,
    completed         INTEGER NOT NULL DEFAULT 0,
    failed            INTEGER NOT NULL DEFAULT 0,
    cancelled         INTEGER NOT NULL DEFAULT 0,
    expired           INTEGER NOT NULL DEFAULT 0,
    created_at        INTEGER NOT NULL,
    in_progress_at    INTEGER,
    expires_at        INTEGER,
    finalizing_at     INTEGER,
    completed_at      INTEGER,
    failed_at         INTEGER,
    expired_at        INTEGER,
    cancelling_at     INTEGER,
    cancelled_at      INTEGER
);
CREATE INDEX batches_by_owner ON batches (owner, seq);
CREATE INDEX batches_unfinished ON batches (expires_at) WHERE status IN ('in_progress', 'cancelling');

-- The models each batch uses: a tiny table the scheduler reads instead of the backlog.
CREATE TABLE batch_models (
    batch_seq INTEGER NOT NULL,
    model     TEXT    NOT NULL,
    PRIMARY KEY (batch_seq, model)
) WITHOUT ROWID;

CREATE TABLE requests (
    id                  INTEGER PRIMARY KEY,
    batch_seq           INTEGER NOT NULL,
    template_id         INTEGER NOT NULL,
    line                INTEGER NOT NULL,
    model               TEXT    NOT NULL,
    -- The batch deadline in ms, or the largest integer for none: the claim order key.
    deadline            INTEGER NOT NULL,
    state               TEXT    NOT NULL CHECK (state IN ('pending', 'running', 'completed',
                            'failed', 'cancelled', 'expired')),
    -- A scheduled retry: not claimable before this time. NULL means claimable now.
    not_before          INTEGER,
    attempts            INTEGER NOT NULL DEFAULT 0,
    daemon_id           TEXT,
    lease               INTEGER,
    started_at          INTEGER,
    finished_at         INTEGER,
    status_code         INTEGER,
    response            TEXT,
    upstream_request_id TEXT,
    error_code          TEXT,
    error_message       TEXT
);
-- Only claimable rows: the claim's cost depends on what it takes, never on the backlog.
CREATE INDEX requests_claimable ON requests (model, deadline, id)
    WHERE state = 'pending' AND not_before IS NULL;
CREATE INDEX requests_retry_due ON requests (not_before)
    WHERE state = 'pending' AND not_before IS NOT NULL;
CREATE INDEX requests_running ON requests (daemon_id) WHERE state = 'running';
CREATE INDEX requests_by_batch ON requests (batch_seq, line);

CREATE TABLE daemons (
    id                TEXT    PRIMARY KEY,
    hostname          TEXT    NOT NULL,
    pid               INTEGER NOT NULL,
    version           TEXT    NOT NULL,
    status            TEXT    NOT NULL CHECK (status IN ('running', 'stopped', 'dead')),
    started_at        INTEGER NOT NULL,
    last_heartbeat    INTEGER NOT NULL,
    stopped_at        INTEGER,
    requests_finished INTEGER NOT NULL DEFAULT 0
);

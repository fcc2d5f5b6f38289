-- Runs and their task instances. A run keeps the workflow version it started with;
-- its row is locked (SELECT ... FOR UPDATE) by whoever advances it, so task events
-- of one run and the retry loop change it one at a time.

CREATE TABLE runs (
    run_id uuid PRIMARY KEY,
    workflow_name text NOT NULL,
    workflow_version bigint NOT NULL,
    state smallint NOT NULL,
    cause bytea NOT NULL,           -- RunCause proto
    params jsonb NOT NULL,
    request_id text UNIQUE,         -- TriggerRun's idempotency key; NULL when none was given
    message text NOT NULL DEFAULT '',
    created_at timestamptz NOT NULL DEFAULT now(),
    started_at timestamptz,
    finished_at timestamptz,
    FOREIGN KEY (workflow_name, workflow_version) REFERENCES workflow_versions (name, version)
);
CREATE INDEX runs_newest ON runs (created_at DESC, run_id DESC);
CREATE INDEX runs_of_workflow ON runs (workflow_name, created_at DESC, run_id DESC);

CREATE TABLE task_instances (
    run_id uuid NOT NULL REFERENCES runs (run_id),
    task_id text NOT NULL,
    position integer NOT NULL,      -- DAG order within the run
    state smallint NOT NULL,
    attempt integer NOT NULL,
    node_id text NOT NULL DEFAULT '',
    outputs jsonb,
    message text NOT NULL DEFAULT '',
    due_at timestamptz,             -- next attempt's time while RETRY_WAIT
    started_at timestamptz,
    finished_at timestamptz,
    PRIMARY KEY (run_id, task_id)
);
-- The retry loop asks "which waits are over?" without scanning finished tasks.
CREATE INDEX task_instances_due ON task_instances (due_at) WHERE due_at IS NOT NULL;

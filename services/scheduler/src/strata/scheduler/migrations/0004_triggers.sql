-- What starts runs besides TriggerRun, and what a watcher reads.
--
-- trigger_key: the cause of a run that a trigger may announce more than once
-- (a data-arrival event republished, a cron tick seen again after a restart, a
-- backfill asked twice); the unique index makes the second run impossible.
-- lane and lane_limit: the runs that count against one another's limit
-- (max_active_runs, or a backfill's max_concurrent); a run over its lane's limit
-- waits QUEUED and starts, in creation order (created, a sequence: created_at may
-- repeat when many runs are made at once), when an active run of its lane ends.

ALTER TABLE runs
    ADD COLUMN trigger_key text UNIQUE,
    ADD COLUMN lane text NOT NULL DEFAULT '',
    ADD COLUMN lane_limit integer NOT NULL DEFAULT 0,
    ADD COLUMN created bigserial;
CREATE INDEX runs_lane ON runs (workflow_name, lane, state, created);

-- The last cron tick each schedule ran (or passed, while paused), so a restarted
-- scheduler neither repeats nor skips a tick. A schedule is one cron trigger of a
-- workflow; re-applying the same expression keeps its row, and so its last tick.
CREATE TABLE schedules (
    workflow_name text NOT NULL REFERENCES workflows (name),
    expression text NOT NULL,
    time_zone text NOT NULL,
    last_tick timestamptz NOT NULL,
    PRIMARY KEY (workflow_name, expression, time_zone)
);

-- Every change of a run, in commit order per run (the run's row lock orders them),
-- as the WatchRunResponse a watcher gets; written with the change itself.
CREATE TABLE run_changes (
    seq bigserial PRIMARY KEY,
    run_id uuid NOT NULL REFERENCES runs (run_id),
    change bytea NOT NULL
);
CREATE INDEX run_changes_of_run ON run_changes (run_id, seq);

-- The partitions the scheduler has seen arrive (the latest announcement of each), so
-- a workflow applied later can be backfilled over the partitions that came before.
CREATE TABLE partitions (
    dataset text NOT NULL,
    partition text NOT NULL,
    uri text NOT NULL,
    checksum text NOT NULL,
    arrived_at timestamptz NOT NULL,
    PRIMARY KEY (dataset, partition)
);
CREATE INDEX partitions_arrived ON partitions (dataset, arrived_at);

-- Queues with their quota, weight and per-user cap (a queue never applied has no
-- quota, weight 1 and no cap); who each attempt runs for; the hard limits a
-- placement was given beside what it reserves; and the measured usage of past
-- attempts, which placement sizes the next attempt of the same task from.

CREATE TABLE queues (
    name text PRIMARY KEY,
    quota_cpu_millis bigint,           -- NULL: no limit on that kind
    quota_memory_bytes bigint,
    quota_gpus integer,
    weight double precision NOT NULL DEFAULT 1,
    max_running_per_user integer NOT NULL DEFAULT 0,   -- 0: no cap
    applied_at timestamptz NOT NULL DEFAULT now()
);

ALTER TABLE pending
    ADD COLUMN workflow_name text NOT NULL DEFAULT '',
    ADD COLUMN user_name text NOT NULL DEFAULT '',
    -- True: waits for room on a node (what the autoscaler provides); false: held
    -- by its queue's quota or per-user cap, or not looked at yet.
    ADD COLUMN for_capacity boolean NOT NULL DEFAULT false,
    -- What placement will reserve for it (sized by the last round); NULL: not sized yet.
    ADD COLUMN reserve_cpu_millis bigint,
    ADD COLUMN reserve_memory_bytes bigint,
    ADD COLUMN reserve_gpus integer;
CREATE INDEX pending_for_capacity ON pending (sequence) WHERE for_capacity;

ALTER TABLE placements
    ADD COLUMN workflow_name text NOT NULL DEFAULT '',
    ADD COLUMN user_name text NOT NULL DEFAULT '',
    -- The hard limits the agent enforces (the request, memory raised after an
    -- out-of-memory attempt); cpu_millis, memory_bytes and gpus stay what is reserved.
    ADD COLUMN limit_cpu_millis bigint,
    ADD COLUMN limit_memory_bytes bigint,
    ADD COLUMN limit_gpus integer;
UPDATE placements SET limit_cpu_millis = cpu_millis, limit_memory_bytes = memory_bytes,
    limit_gpus = gpus;
ALTER TABLE placements
    ALTER COLUMN limit_cpu_millis SET NOT NULL,
    ALTER COLUMN limit_memory_bytes SET NOT NULL,
    ALTER COLUMN limit_gpus SET NOT NULL;
CREATE INDEX placements_by_queue ON placements (queue, user_name);

-- One row per attempt that finished or was stopped for memory: what it used at
-- peak under what memory limit.
CREATE TABLE task_usage (
    workflow_name text NOT NULL,
    task_id text NOT NULL,
    run_id text NOT NULL,
    attempt integer NOT NULL,
    peak_memory_bytes bigint NOT NULL,
    peak_cpu_millis bigint NOT NULL,
    limit_memory_bytes bigint NOT NULL,
    out_of_memory boolean NOT NULL,
    ended_at timestamptz NOT NULL,
    PRIMARY KEY (run_id, task_id, attempt)
);
CREATE INDEX task_usage_newest ON task_usage (workflow_name, task_id, ended_at DESC);

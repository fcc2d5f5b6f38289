-- Nodes that agents registered, the attempts waiting for a node, and the attempts
-- placed on one. The request of each attempt is kept as its TaskRequested proto,
-- so an assignment can be sent (or sent again) from what is durable.

CREATE TABLE nodes (
    node_id text PRIMARY KEY,
    hostname text NOT NULL,
    state smallint NOT NULL,           -- NodeState
    cpu_millis bigint NOT NULL,
    memory_bytes bigint NOT NULL,
    gpus integer NOT NULL,
    labels jsonb NOT NULL,
    agent_version text NOT NULL,
    warm_bundles text[] NOT NULL,
    session_id uuid NOT NULL,          -- the current Connect stream of the node
    usage bytea,                       -- latest ResourceUsage proto
    joined_at timestamptz NOT NULL,
    last_seen_at timestamptz NOT NULL
);

CREATE TABLE pending (
    run_id text NOT NULL,
    task_id text NOT NULL,
    attempt integer NOT NULL,
    sequence bigserial NOT NULL,       -- arrival order: FIFO within a priority
    queue text NOT NULL,
    priority integer NOT NULL,
    request bytea NOT NULL,            -- TaskRequested proto
    requested_at timestamptz NOT NULL DEFAULT now(),
    waiting_for text NOT NULL DEFAULT '',
    PRIMARY KEY (run_id, task_id, attempt)
);
CREATE INDEX pending_in_order ON pending (queue, priority DESC, sequence);

CREATE TABLE placements (
    run_id text NOT NULL,
    task_id text NOT NULL,
    attempt integer NOT NULL,
    node_id text NOT NULL REFERENCES nodes (node_id),
    queue text NOT NULL,
    priority integer NOT NULL,
    request bytea NOT NULL,            -- TaskRequested proto
    cpu_millis bigint NOT NULL,        -- what placement reserved on the node
    memory_bytes bigint NOT NULL,
    gpus integer NOT NULL,
    running boolean NOT NULL DEFAULT false,
    placed_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (run_id, task_id, attempt)
);
CREATE INDEX placements_on_node ON placements (node_id, placed_at);

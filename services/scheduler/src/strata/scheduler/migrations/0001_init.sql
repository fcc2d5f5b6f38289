-- The scheduler's first schema: its workflows, and the outbox and inbox every
-- service has (strata.core.outbox, strata.core.inbox). Names are unqualified:
-- the migration runner sets search_path to the service schema.

CREATE TABLE workflows (
    name text PRIMARY KEY,
    spec bytea NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

-- Events committed with a state change, waiting for the relay to put them on Kafka.
-- Rows are deleted once Kafka acknowledged them, so the table stays small.
CREATE TABLE outbox (
    id bigserial PRIMARY KEY,
    topic text NOT NULL,
    key text NOT NULL,
    event_id uuid NOT NULL UNIQUE,
    payload bytea NOT NULL,
    headers jsonb NOT NULL DEFAULT '{}',
    created_at timestamptz NOT NULL DEFAULT now()
);

-- Events this service's consumers already handled, for de-duplication by event id.
CREATE TABLE inbox (
    consumer text NOT NULL,
    event_id uuid NOT NULL,
    handled_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, event_id)
);
CREATE INDEX inbox_handled_at ON inbox (handled_at);

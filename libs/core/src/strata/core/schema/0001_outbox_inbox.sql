-- The outbox and inbox of every service schema (strata.core.outbox, strata.core.inbox).
-- Names are unqualified: the migration runner sets search_path to the service schema.

-- Events committed with a state change, waiting for the relay to put them on Kafka.
-- Rows are deleted once Kafka acknowledged them, so the table stays as small as the
-- backlog. event_type is the envelope's type, sent as the `event-type` header without
-- decoding the payload; headers holds the trace context. attempts and last_error say
-- why a row is still here: the broker refused it (counted) or Kafka was out (not).
CREATE TABLE outbox (
    id bigserial PRIMARY KEY,
    topic text NOT NULL,
    key text NOT NULL,
    event_id uuid NOT NULL UNIQUE,
    event_type text NOT NULL,
    payload bytea NOT NULL,
    headers jsonb NOT NULL DEFAULT '{}',
    attempts integer NOT NULL DEFAULT 0,
    last_error text,
    created_at timestamptz NOT NULL DEFAULT now()
);

-- Rows the broker refused max_attempts times (too large, unknown topic, not
-- authorised). Each blocks the later rows of its (topic, key) until an operator
-- requeues it (same id, so it goes first) or drops it.
CREATE TABLE outbox_parked (
    id bigint PRIMARY KEY,
    topic text NOT NULL,
    key text NOT NULL,
    event_id uuid NOT NULL UNIQUE,
    event_type text NOT NULL,
    payload bytea NOT NULL,
    headers jsonb NOT NULL,
    attempts integer NOT NULL,
    last_error text NOT NULL,
    created_at timestamptz NOT NULL,
    parked_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX outbox_parked_topic_key ON outbox_parked (topic, key);

-- Events this service's consumers already handled, for de-duplication by event id.
CREATE TABLE inbox (
    consumer text NOT NULL,
    event_id uuid NOT NULL,
    handled_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, event_id)
);
CREATE INDEX inbox_handled_at ON inbox (handled_at);

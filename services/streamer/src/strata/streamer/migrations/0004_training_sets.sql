-- Point-in-time training sets and the jobs building them. The request is kept as
-- its proto bytes; the view versions (with the groups allowed to read each) and
-- the partitions read, as JSON lists. A job is claimed by setting lease_until;
-- one whose streamer died is claimed again once its lease has passed.

CREATE TABLE training_sets (
    id uuid PRIMARY KEY,
    request_id text UNIQUE,
    request bytea NOT NULL,
    feature_views jsonb NOT NULL,
    state text NOT NULL,
    progress double precision NOT NULL DEFAULT 0,
    label_rows bigint NOT NULL DEFAULT 0,
    rows_written bigint NOT NULL DEFAULT 0,
    output_uri text NOT NULL,
    checksum text NOT NULL DEFAULT '',
    partitions jsonb NOT NULL DEFAULT '[]',
    message text NOT NULL DEFAULT '',
    lease_until timestamptz,
    created_at timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz
);

CREATE INDEX training_sets_pending ON training_sets (created_at) WHERE state IN ('pending', 'running');

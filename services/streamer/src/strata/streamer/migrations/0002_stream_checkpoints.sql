-- Where each view version's stream stands: the next offset of every partition of
-- its topic and the window state (a strata.transforms snapshot) after the records
-- before them. Saved together after each batch's online write, so a restarted
-- streamer resumes exactly there: no record is counted twice or lost.

CREATE TABLE stream_checkpoints (
    name text NOT NULL,
    version bigint NOT NULL,
    offsets jsonb NOT NULL,
    state bytea NOT NULL,
    saved_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (name, version),
    FOREIGN KEY (name, version) REFERENCES feature_view_versions (name, version)
);

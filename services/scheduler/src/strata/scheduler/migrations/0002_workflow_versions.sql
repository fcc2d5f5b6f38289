-- Versioned workflows: every applied spec is kept, so a run can execute the version
-- it started with while newer ones are applied. `workflows` keeps one row per name
-- with its current version; the spec moves to `workflow_versions`.

ALTER TABLE workflows
    DROP COLUMN spec,
    ADD COLUMN current_version bigint NOT NULL,
    ADD COLUMN paused boolean NOT NULL DEFAULT false,
    ADD COLUMN updated_at timestamptz NOT NULL DEFAULT now();

CREATE TABLE workflow_versions (
    name text NOT NULL REFERENCES workflows (name),
    version bigint NOT NULL CHECK (version >= 1),
    spec bytea NOT NULL,
    spec_sha256 text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now(),
    applied_by text NOT NULL,
    PRIMARY KEY (name, version)
);

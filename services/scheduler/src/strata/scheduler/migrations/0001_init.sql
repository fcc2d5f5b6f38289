-- The scheduler's first schema: its workflows. The outbox and inbox come from the
-- core's own migrations (strata.core.schema), applied first by migrate_service.
-- Names are unqualified: the migration runner sets search_path to the service schema.

CREATE TABLE workflows (
    name text PRIMARY KEY,
    spec bytea NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

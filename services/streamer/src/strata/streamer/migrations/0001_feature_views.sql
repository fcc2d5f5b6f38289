-- The feature-view catalog: one row per view name with its current version, and
-- every applied version kept (a training set or a stream may still use an old one).
-- allowed_groups is a column of the current version, so a listing filters by the
-- caller's groups without decoding specs. Names are unqualified: the migration
-- runner sets search_path to the service schema.

CREATE TABLE feature_views (
    name text PRIMARY KEY,
    current_version bigint NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE feature_view_versions (
    name text NOT NULL REFERENCES feature_views (name),
    version bigint NOT NULL CHECK (version >= 1),
    spec bytea NOT NULL,
    spec_sha256 text NOT NULL,
    allowed_groups text[] NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now(),
    applied_by text NOT NULL,
    PRIMARY KEY (name, version)
);

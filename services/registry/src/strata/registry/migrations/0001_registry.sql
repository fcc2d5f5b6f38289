-- The registry's first schema: models, artifacts, versions, aliases, the audit log
-- and the uploads in progress. The outbox comes from the core's migrations.

CREATE TABLE models (
    name text PRIMARY KEY,
    description text NOT NULL,
    owner text NOT NULL,
    labels jsonb NOT NULL,
    latest_version bigint NOT NULL DEFAULT 0,
    created_at timestamptz NOT NULL DEFAULT now(),
    created_by text NOT NULL
);

-- Content-addressed files of a model; the bytes live in the blob store at blob_key.
CREATE TABLE artifacts (
    model_name text NOT NULL REFERENCES models (name),
    sha256 text NOT NULL,
    size_bytes bigint NOT NULL,
    kind smallint NOT NULL,
    name text NOT NULL,
    media_type text NOT NULL,
    blob_key text NOT NULL,
    -- For ONNX models: the signature and format read from the file (a JSON object).
    onnx jsonb,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (model_name, sha256)
);

-- A version is immutable: kept as its ModelVersion message (aliases excluded).
CREATE TABLE versions (
    model_name text NOT NULL REFERENCES models (name),
    version bigint NOT NULL,
    request_id text,
    body bytea NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (model_name, version),
    UNIQUE (model_name, request_id)
);

CREATE TABLE aliases (
    model_name text NOT NULL REFERENCES models (name),
    alias text NOT NULL,
    version bigint NOT NULL,
    PRIMARY KEY (model_name, alias),
    FOREIGN KEY (model_name, version) REFERENCES versions (model_name, version)
);

CREATE TABLE audit_log (
    id bigserial PRIMARY KEY,
    occurred_at timestamptz NOT NULL DEFAULT now(),
    principal text NOT NULL,
    action smallint NOT NULL,
    model_name text NOT NULL,
    version bigint NOT NULL DEFAULT 0,
    alias text NOT NULL DEFAULT '',
    previous_version bigint NOT NULL DEFAULT 0,
    artifact_sha256 text NOT NULL DEFAULT '',
    reason text NOT NULL DEFAULT ''
);
CREATE INDEX audit_log_by_model ON audit_log (model_name, id);

-- Uploads in progress: the header they started with and the bytes stored so far,
-- as parts in the blob store under uploads/<upload_id>/<offset>.
CREATE TABLE uploads (
    upload_id text PRIMARY KEY,
    model_name text NOT NULL REFERENCES models (name),
    header bytea NOT NULL,
    received bigint NOT NULL DEFAULT 0,
    created_at timestamptz NOT NULL DEFAULT now()
);

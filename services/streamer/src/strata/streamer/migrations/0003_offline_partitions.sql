-- The offline store's index: every Parquet partition a view version's stream landed
-- in the blob store. A row is written in the same transaction as the stream's
-- checkpoint (and the DataArrived announcing it), so the partitions listed here
-- hold each consumed raw event exactly once; a file a crashed streamer wrote
-- before its checkpoint is not listed and is never read.

CREATE TABLE offline_partitions (
    name text NOT NULL,
    version bigint NOT NULL,
    dataset text NOT NULL,
    partition text NOT NULL,
    uri text NOT NULL,
    row_count bigint NOT NULL,
    size_bytes bigint NOT NULL,
    checksum text NOT NULL,
    start_time timestamptz NOT NULL,
    end_time timestamptz NOT NULL,
    landed_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (name, version, partition),
    FOREIGN KEY (name, version) REFERENCES feature_view_versions (name, version)
);

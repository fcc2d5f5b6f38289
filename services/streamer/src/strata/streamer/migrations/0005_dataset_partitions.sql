-- The partitions of the datasets that dataset-sourced views read, as DataArrived
-- announced them (strata.streamer.domain.datasets): a training set over such a
-- view reads these files and checks each against its checksum. A partition
-- announced again replaces its row. Recorded in the same transaction as the
-- event's inbox claim, so a redelivered announcement changes nothing.

CREATE TABLE dataset_partitions (
    dataset text NOT NULL,
    partition text NOT NULL,
    uri text NOT NULL,
    checksum text NOT NULL,
    row_count bigint NOT NULL,
    size_bytes bigint NOT NULL,
    event_id uuid NOT NULL,
    arrived_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (dataset, partition)
);

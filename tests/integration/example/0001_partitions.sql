-- The example service's one table: the partitions it heard of.
CREATE TABLE partitions (
    dataset text NOT NULL,
    partition text NOT NULL,
    PRIMARY KEY (dataset, partition)
);

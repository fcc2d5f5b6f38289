"""Which DataArrived announcements a dataset-sourced view can read, and the checksum
check of a partition's file when a training set reads it."""

from __future__ import annotations

import hashlib

import pytest

from strata.api.data.v1.data_pb2 import DataArrived
from strata.core.errors import InvalidArgumentError
from strata.streamer.domain.datasets import (
    PartitionChecksumError,
    SourcePartition,
    check_content,
    partition_of,
)

CONTENT = b"parquet bytes"
SHA = f"sha256:{hashlib.sha256(CONTENT).hexdigest()}"


def _event(**changes: str) -> DataArrived:
    event = DataArrived(
        dataset="deliveries",
        partition="date=2026-06-01",
        uri="lake/deliveries/date=2026-06-01/part-0.parquet",
        checksum=SHA,
        format="parquet",
    )
    for field, value in changes.items():
        setattr(event, field, value)
    return event


def test_a_parquet_file_with_a_sha256_is_a_partition() -> None:
    assert partition_of(_event()) == SourcePartition(
        "deliveries", "date=2026-06-01", "lake/deliveries/date=2026-06-01/part-0.parquet", SHA
    )
    assert partition_of(_event(format="")).checksum == SHA


@pytest.mark.parametrize(
    ("changes", "field", "says"),
    [
        ({"partition": ""}, "partition", "is empty"),
        ({"format": "csv"}, "format", "Parquet partitions only"),
        ({"uri": "/abs/part.parquet"}, "uri", "blob key"),
        ({"checksum": "md5:abc"}, "checksum", "sha256"),
        ({"checksum": "sha256:XYZ"}, "checksum", "64 lower-case hex digits"),
    ],
)
def test_an_announcement_that_does_not_fit_is_refused_naming_the_field(
    changes: dict[str, str], field: str, says: str
) -> None:
    with pytest.raises(InvalidArgumentError) as refused:
        partition_of(_event(**changes))
    assert refused.value.field == field
    assert says in str(refused.value)


def test_content_that_changed_since_the_announcement_names_both_checksums() -> None:
    partition = partition_of(_event())
    check_content(partition, CONTENT)

    with pytest.raises(PartitionChecksumError) as changed:
        check_content(partition, b"other bytes")

    found = f"sha256:{hashlib.sha256(b'other bytes').hexdigest()}"
    message = str(changed.value)
    assert "'date=2026-06-01'" in message
    assert "'deliveries'" in message
    assert SHA in message
    assert found in message

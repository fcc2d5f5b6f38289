"""Partitions of the datasets that dataset-sourced views read, as DataArrived announces them.

A view whose source is a dataset has no stream: its rows are the partitions some
other producer lands in the blob store and announces on ``strata.data.arrived``.
The streamer records each announced partition of a dataset some current view
reads (its file and checksum); a training set over such a view reads those files,
and checks each one's content against the announced checksum first, so a
partition rewritten after its announcement fails the job instead of silently
training on other data than the lineage names.

A partition is one Parquet file in the blob store (its blob key as ``uri``) with a
``sha256:<hex>`` checksum of the file. A partition announced again replaces the
earlier record (the producer rewrote it). Rows are taken in partition-name order,
then file order: that is their arrival order for the lateness rule.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from strata.api.data.v1.data_pb2 import DataArrived
from strata.core.blobs import check_key
from strata.core.errors import InvalidArgumentError, StrataError

FORMATS = ("", "parquet")
"""Formats a dataset-sourced view reads (empty: Parquet, the offline store's format)."""
CHECKSUM = "sha256:"


@dataclass(frozen=True)
class SourcePartition:
    """One file of a view's rows: a partition of a dataset with the checksum announced."""

    dataset: str
    partition: str
    uri: str
    """Blob key of the partition's Parquet file."""
    checksum: str
    """``sha256:<hex>`` of the file, as announced."""


class PartitionChecksumError(StrataError):
    """A partition's file no longer has the content its announcement pinned."""


def partition_of(event: DataArrived) -> SourcePartition:
    """The partition ``event`` announces; InvalidArgumentError naming the field that
    does not fit (the event is dead-lettered with it)."""
    if not event.dataset:
        raise InvalidArgumentError("dataset", "is empty: name the dataset")
    if not event.partition:
        raise InvalidArgumentError("partition", f"is empty for dataset {event.dataset!r}")
    what = f"partition {event.partition!r} of dataset {event.dataset!r}"
    if event.format.lower() not in FORMATS:
        raise InvalidArgumentError(
            "format", f"{what} is {event.format!r}: feature views read Parquet partitions only"
        )
    try:
        check_key(event.uri)
    except ValueError as error:
        raise InvalidArgumentError(
            "uri", f"{what}: {error}; expected the blob key of the partition's Parquet file"
        ) from None
    digest = event.checksum.removeprefix(CHECKSUM)
    if not event.checksum.startswith(CHECKSUM) or not _is_sha256(digest):
        raise InvalidArgumentError(
            "checksum",
            f"{what} has checksum {event.checksum!r}: expected 'sha256:' and 64 lower-case "
            "hex digits",
        )
    return SourcePartition(event.dataset, event.partition, event.uri, event.checksum)


def check_content(partition: SourcePartition, content: bytes) -> None:
    """PartitionChecksumError naming the partition and both checksums unless they agree."""
    found = f"{CHECKSUM}{hashlib.sha256(content).hexdigest()}"
    if found != partition.checksum:
        raise PartitionChecksumError(
            f"partition {partition.partition!r} of dataset {partition.dataset!r} "
            f"({partition.uri}) has checksum {found}, but was announced with "
            f"{partition.checksum}"
        )


def _is_sha256(digest: str) -> bool:
    return len(digest) == 64 and all(c in "0123456789abcdef" for c in digest)

"""The offline store's layout: where a stream's raw events land and what each part is called.

A view version's stream lands the raw events it consumed (as validated against
the view's source columns) in the blob store as Parquet, one **partition per
flushed batch within an hour of event time**: a flush that holds events of two
hours lands two partitions. The partition name says the hour first, so a
dataset's partitions sort by time, then the view version and the Kafka offsets
the batch starts at, which makes the name the same if a crashed stream lands the
same batch again::

    offline/<dataset>/hour=2026-06-01T08/batch=<view>.v<version>.<offsets hash>/part-0.parquet

The dataset is the view's topic ("its offline copy is the dataset of the same
name"). Each view version lands its own copy, in its own columns, and reads back
only the partitions it landed (the catalog lists them), so two views of one topic,
or two versions of one view, never mix their rows.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

FORMAT = "parquet"
"""The offline store's file format, as DataArrived names it."""


@dataclass(frozen=True)
class LandedPartition:
    """One partition written to the blob store, as the catalog records and DataArrived says."""

    dataset: str
    partition: str
    uri: str
    """Blob key of the partition's Parquet file."""
    row_count: int
    size_bytes: int
    checksum: str
    """``sha256:<hex>`` of the file."""
    start_time: datetime
    end_time: datetime


def partition_name(view: str, version: int, hour: datetime, start: Mapping[int, int]) -> str:
    """The partition of ``view`` version ``version``'s batch starting at ``start`` offsets.

    ``hour`` is the (UTC) hour of event time the partition holds.
    """
    offsets = json.dumps({str(p): o for p, o in sorted(start.items())}, separators=(",", ":"))
    token = hashlib.sha256(offsets.encode()).hexdigest()[:16]
    return f"hour={hour:%Y-%m-%dT%H}/batch={view}.v{version}.{token}"


def partition_key(dataset: str, partition: str) -> str:
    """The blob key of a partition's (single) Parquet file."""
    return f"offline/{dataset}/{partition}/part-0.parquet"

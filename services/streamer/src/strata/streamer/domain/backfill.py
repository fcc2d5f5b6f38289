"""Which offline rows a backfill folds, and in what order (no I/O).

A topic-sourced view's events may sit in the partitions of several of its
versions: each version's stream lands its own copy of the topic, from the
topic's beginning. A backfill reads the copies of every version whose source
(topic and columns) is the current one's, so a new version over a topic whose
early events Kafka no longer holds still gets them from an older copy; the same
Kafka record found in two copies (same ``__partition`` and ``__offset``) is
folded once. Rows are folded in arrival order (Kafka partition, then offset: one
entity's events keep their order, as the stream saw them); a dataset's rows
keep the order of its partitions and files. ``start`` and ``end`` bound the
event times of the rows read.
"""

from __future__ import annotations

from datetime import datetime

import pyarrow as pa
import pyarrow.compute as pc

from strata.api.features.v1.features_pb2 import FeatureViewSpec


def same_source(a: FeatureViewSpec, b: FeatureViewSpec) -> bool:
    """Whether two versions read the same rows (their offline copies are interchangeable)."""
    return a.source == b.source


def rows_to_fold(
    rows: pa.Table,
    event_time: str,
    arrival: tuple[str, str] | None,
    start: datetime | None,
    end: datetime | None,
) -> pa.Table:
    """``rows`` within ``[start, end]`` of event time, in arrival order, each Kafka record once.

    ``arrival`` names the Kafka partition and offset columns of a topic's copy;
    None for a dataset, whose rows keep their order.
    """
    times = rows.column(event_time)
    if start is not None:
        rows = rows.filter(pc.greater_equal(times, pa.scalar(start, times.type)))
        times = rows.column(event_time)
    if end is not None:
        rows = rows.filter(pc.less_equal(times, pa.scalar(end, times.type)))
    if arrival is None or rows.num_rows < 2:
        return rows
    partition, offset = arrival
    rows = rows.sort_by([(partition, "ascending"), (offset, "ascending")])
    parts = rows.column(partition).combine_chunks()
    offsets = rows.column(offset).combine_chunks()
    repeated = pc.and_(pc.equal(parts[1:], parts[:-1]), pc.equal(offsets[1:], offsets[:-1]))
    keep = pa.concat_arrays([pa.array([True]), pc.invert(repeated)])
    return rows.filter(keep)

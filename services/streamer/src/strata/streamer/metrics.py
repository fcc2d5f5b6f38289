"""The streamer's own metrics, beside the runtime's (``strata.core.metrics``).

What a team watching a feature view's stream asks: how many raw events it
consumed, how many it dead-lettered (they did not fit the view), how many the
window rules dropped (late beyond the allowed lateness, duplicates, a null key or
event time), and how many offline partitions it landed. Labelled by view name:
a catalog holds tens of views, not an unbounded set.

They are built with the service spec, before the runtime has a registry, and
:meth:`StreamerMetrics.attach` adds them to the process's registry (served on
``/metrics``) when the streams start.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter

from strata.transforms.streaming import IngestCounts


class StreamerMetrics:
    """Counts of the view streams, per view."""

    def __init__(self) -> None:
        self.consumed = Counter(
            "strata_streamer_events_consumed",
            "Raw events read from a view's topic, by view (dead-lettered ones included).",
            ["view"],
            registry=None,
        )
        self.dead_lettered = Counter(
            "strata_streamer_events_dead_lettered",
            "Raw events that did not fit the view's source columns, sent to <topic>.dlq.",
            ["view"],
            registry=None,
        )
        self.dropped = Counter(
            "strata_streamer_events_dropped",
            "Events the window rules did not count, by view and reason (late: behind the "
            "allowed lateness; duplicate: identical to one counted; invalid: null key or time).",
            ["view", "reason"],
            registry=None,
        )
        self.partitions_landed = Counter(
            "strata_streamer_partitions_landed",
            "Offline Parquet partitions landed (and announced with DataArrived), by view.",
            ["view"],
            registry=None,
        )
        self._attached: set[int] = set()

    def attach(self, registry: CollectorRegistry) -> None:
        """Serve these metrics from ``registry``; again with the same registry is a no-op."""
        if id(registry) in self._attached:
            return
        self._attached.add(id(registry))
        for collector in (self.consumed, self.dead_lettered, self.dropped, self.partitions_landed):
            registry.register(collector)

    def count_ingest(self, view: str, before: IngestCounts, after: IngestCounts) -> None:
        """What the window rules dropped between two readings of an executor's counts."""
        self.dropped.labels(view, "late").inc(after.late - before.late)
        self.dropped.labels(view, "duplicate").inc(after.duplicates - before.duplicates)
        self.dropped.labels(view, "invalid").inc(after.invalid - before.invalid)

"""Which offsets may be committed, and when: the bookkeeping behind the Bus's commits.

A partition's offset is *settled* up to a record once that record and every record
before it was handled, skipped or dead-lettered. Only settled offsets are ever
committed, so a commit never passes a record whose fate is open.

Committing is batched: Kafka 4 holds every offset commit up to
``group.coordinator.append.linger.ms`` (5 ms by default), so a commit per record
would cap a consumer near 200 records a second. The Bus commits once
``commit_every`` records were settled since the last commit or the oldest of them
waited ``commit_interval_ms``, and always before it gives partitions up (rebalance,
stop). After a crash, the records settled since the last commit are read again;
consumers de-duplicate them by event id (:mod:`strata.core.inbox`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping

from aiokafka import TopicPartition


class Offsets:
    """Settled and committed offsets per partition, and whether a commit is due."""

    def __init__(
        self, *, every: int, interval: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if every < 1:
            raise ValueError(f"every must be at least 1 record, got {every}")
        if interval <= 0:
            raise ValueError(f"interval must be positive seconds, got {interval}")
        self._every = every
        self._interval = interval
        self._clock = clock
        self._settled: dict[TopicPartition, int] = {}
        self._committed: dict[TopicPartition, int] = {}
        self._waiting = 0
        """Records settled since the last commit was taken."""
        self._since: float | None = None
        """When the oldest of them was settled."""

    def settle(self, partition: TopicPartition, next_offset: int, records: int = 1) -> None:
        """Every record of ``partition`` before ``next_offset`` has its fate settled.

        ``records`` is how many of them were settled by this call.
        """
        if next_offset <= self._settled.get(partition, -1):
            return
        self._settled[partition] = next_offset
        self._waiting += records
        if self._since is None:
            self._since = self._clock()

    def due(self) -> bool:
        """Whether enough records or enough time have piled up for a commit."""
        if self._since is None:
            return False
        return self._waiting >= self._every or self._clock() - self._since >= self._interval

    def wait(self) -> float | None:
        """Seconds until a commit falls due by time; None when nothing waits for one."""
        if self._since is None:
            return None
        return max(0.0, self._since + self._interval - self._clock())

    def take(self, partitions: Iterable[TopicPartition] | None = None) -> dict[TopicPartition, int]:
        """The offsets to commit now (of ``partitions``, default all), and restart the clock.

        What is taken stays uncommitted until :meth:`committed` confirms it, so a
        failed commit is retried by the next one.
        """
        chosen = self._settled if partitions is None else set(partitions) & self._settled.keys()
        offsets = {
            tp: self._settled[tp]
            for tp in chosen
            if self._settled[tp] > self._committed.get(tp, -1)
        }
        self._waiting = 0
        self._since = None
        return offsets

    def committed(self, offsets: Mapping[TopicPartition, int]) -> None:
        """Kafka acknowledged the commit of ``offsets``."""
        for tp, offset in offsets.items():
            if offset > self._committed.get(tp, -1):
                self._committed[tp] = offset

    def failed(self) -> None:
        """A commit did not go through: try again one ``interval`` from now."""
        if self._since is None and self.pending():
            self._since = self._clock()

    def pending(self) -> bool:
        """Whether a settled offset is not yet committed."""
        return any(offset > self._committed.get(tp, -1) for tp, offset in self._settled.items())

    def forget(self, partitions: Iterable[TopicPartition]) -> None:
        """Drop partitions this member no longer owns; their next owner goes on from Kafka."""
        for tp in partitions:
            self._settled.pop(tp, None)
            self._committed.pop(tp, None)

"""The events every part of the benchmark sends: the scheduler's ``TaskStateChanged``.

It is the scheduler's most frequent event, so its size (about 200 bytes sealed,
with a W3C trace context) is what the dispatch path really carries. Keys are
run ids, spread over :data:`RUNS` runs as in a busy scheduler.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from opentelemetry import trace

from strata.api.common.v1.envelope_pb2 import Envelope
from strata.api.common.v1.refs_pb2 import TaskAttemptRef
from strata.api.scheduler.v1.scheduler_pb2 import TaskState, TaskStateChanged
from strata.core.bus import event_headers
from strata.core.envelope import seal
from strata.core.telemetry import trace_carrier

PRODUCER = "bench/local"
RUNS = 64
REPEAT_EVERY = 10
"""In the de-duplication workload every 10th record redelivers an earlier event."""

_tracer = trace.get_tracer("bench.bus")


def state_change(number: int) -> TaskStateChanged:
    """The ``number``-th task state change; its run id is also its Kafka key."""
    return TaskStateChanged(
        attempt=TaskAttemptRef(
            run_id=f"run-{number % RUNS:04d}", task_id=f"task-{number % 7}", attempt=1
        ),
        previous_state=TaskState.TASK_STATE_PLACED,
        state=TaskState.TASK_STATE_RUNNING,
        node_id=f"node-{number % 4}",
    )


def sealed(count: int, start: int = 0) -> list[Envelope]:
    """``count`` sealed events, as a service seals them: inside the span of its request."""
    with _tracer.start_as_current_span("bench request"):
        carrier = trace_carrier()
        return [
            seal(change, key=change.attempt.run_id, producer=PRODUCER, trace_context=carrier)
            for change in map(state_change, range(start, start + count))
        ]


@dataclass(frozen=True)
class Record:
    """One Kafka record exactly as the outbox relay would produce it."""

    key: bytes
    value: bytes
    headers: list[tuple[str, bytes]]


def record_of(envelope: Envelope) -> Record:
    """The record of ``envelope`` as the Bus and the relay send it: its key, its bytes,
    the headers of :func:`strata.core.bus.event_headers`."""
    headers = event_headers(envelope.type, envelope.event_id, envelope.trace_context)
    return Record(envelope.key.encode(), envelope.SerializeToString(), headers)


def with_redeliveries(total: int, seed: int = 7) -> list[Record]:
    """``total`` records where every :data:`REPEAT_EVERY`-th one repeats an earlier one.

    A repeat is what Kafka and the outbox deliver after a relay restart or a
    rebalance: the same bytes again, later. :func:`unique_count` says how many
    distinct events there are.
    """
    chooser = random.Random(seed)
    fresh = iter(sealed(unique_count(total)))
    records: list[Record] = []
    for position in range(total):
        if position % REPEAT_EVERY == REPEAT_EVERY - 1:
            records.append(chooser.choice(records))
        else:
            records.append(record_of(next(fresh)))
    return records


def unique_count(total: int) -> int:
    """How many distinct events :func:`with_redeliveries` puts in ``total`` records."""
    return total - total // REPEAT_EVERY

"""The event bus: protobuf events in the common envelope, on Kafka, with dead letters.

>>> bus = Bus("scheduler")
>>> tasks = bus.consumer(TASKS_EVENTS, group="scheduler")
>>> @tasks.on(TaskFinished)
... async def on_finished(event: TaskFinished, envelope: Envelope) -> None: ...
>>> @tasks.on_batch(TaskStateChanged)  # for throughput: one transaction per batch
... async def on_changes(changes: Sequence[tuple[TaskStateChanged, Envelope]]) -> None: ...
>>> async with bus:
...     await bus.publish(TaskRequested(...))  # topic and key from its event option

See :mod:`strata.core.bus.consumer` for what happens to a record that cannot be
handled and how batches work, :mod:`strata.core.bus.offsets` for when offsets are
committed, :mod:`strata.core.bus.failures` for which failures pause a partition
instead, and :mod:`strata.core.bus.dead_letters` for what a dead letter keeps.
"""

from strata.core.bus.broker import Bus
from strata.core.bus.consumer import BatchHandler, Consumer, Handler
from strata.core.bus.dead_letters import dead_letter
from strata.core.bus.failures import Failure, Outage, classify
from strata.core.bus.publisher import HEADER_EVENT_ID, HEADER_EVENT_TYPE, Publisher, event_headers

__all__ = [
    "HEADER_EVENT_ID",
    "HEADER_EVENT_TYPE",
    "BatchHandler",
    "Bus",
    "Consumer",
    "Failure",
    "Handler",
    "Outage",
    "Publisher",
    "classify",
    "dead_letter",
    "event_headers",
]

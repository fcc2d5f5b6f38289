"""The transactional outbox: an event commits with the state change it announces.

A service never publishes to Kafka from inside a transaction. It calls
:meth:`Outbox.publish` on the transaction's connection, which seals the event,
inserts it into ``<schema>.outbox`` and sends ``NOTIFY``; Postgres delivers the
notification only at commit, so a rolled-back transaction publishes nothing and a
committed one wakes the relay at once::

    async with conn.transaction():
        await conn.execute("UPDATE runs SET state = $2 WHERE id = $1", run_id, state)
        await outbox.publish(conn, RunStateChanged(run_id=run_id, state=state))

:class:`OutboxRelay` then puts the rows on Kafka, with the producer and the
headers of the bus (:func:`strata.core.bus.event_headers`), and deletes each row
Kafka acknowledged. A crash between commit and delete leaves the row, so the
event is published (again) later: delivery is at-least-once and consumers
de-duplicate by event id (:mod:`strata.core.inbox`). The tables come from the
core's migrations (:mod:`strata.core.schema`).

Order per key. ``publish`` takes a transaction-scoped advisory lock on
(schema, key) before its insert, so a second writer of one key waits until the
first commits: outbox ids of one key are in commit order, whatever the caller
locks. The relay reads in id order with one idempotent producer, so a key's
events reach their partition in commit order.

Refusals and outages. A row the broker refuses for what it is (too large, a topic
that does not exist, not authorised) counts an attempt; after ``max_attempts`` it
is *parked* in ``<schema>.outbox_parked`` with its attempts and last error
(:func:`parked` lists them, metric ``strata_outbox_parked``). A parked row blocks
the later rows of its (topic, key), since they must not overtake it, until an
operator fixes the cause and calls :func:`requeue` (the row keeps its id and goes
first) or gives it up with :func:`drop`; every other key flows on. An outage
(Kafka unreachable, not enough replicas) is not a refusal: it counts no attempt,
parks nothing, and the rows wait in order until Kafka answers. Events too large
for the broker are refused at :meth:`Outbox.publish` already, with their size and
the limit.
"""

from strata.core.outbox.parked import ParkedEvent, drop, parked, requeue
from strata.core.outbox.relay import OutboxRelay
from strata.core.outbox.writer import MAX_EVENT_BYTES, Outbox, channel

__all__ = [
    "MAX_EVENT_BYTES",
    "Outbox",
    "OutboxRelay",
    "ParkedEvent",
    "channel",
    "drop",
    "parked",
    "requeue",
]

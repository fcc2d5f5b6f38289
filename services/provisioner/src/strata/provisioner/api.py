"""The provisioner's gRPC edge: agents' Connect sessions and the node and queue queries.

A Connect session: the first message must be an ``AgentRegistration``, checked by
:mod:`strata.provisioner.domain.registration` (nonsense capacity is refused with
the field named) and stored; the answer is ``AgentAccepted``. From then on the
session reads the agent's messages (each renews the node's lease) and sends down
the assignments of the attempts placed on the node, from the stored placements,
as soon as a placement or cancellation for the node commits
(:class:`~strata.provisioner.wakeups.Wakeups`; the delivery poll is the safety
net), each once per session (so a reconnecting agent gets again what it does not list
as running), and the node's drain (``DrainRequest``) once per session. Attempts
the agent lists as running (registering, then in each heartbeat) that are not
placed on its node are cancelled on it, once per session
(:mod:`strata.provisioner.domain.reconcile`), and so are placed attempts asked to
stop (``TaskCancelRequested``); one asked to stop before its assignment reached
the agent is reported cancelled here instead. Reports on attempts go through
:mod:`strata.provisioner.reports`.

When a node stops taking work, and what becomes of its attempts:

- the agent says ``AgentLeaving`` (it stops cleanly): the node is drained for
  this session (:mod:`strata.provisioner.draining`) at once; its attempts may
  still finish and be reported on the stream;
- the stream closes (cleanly or not): the node is marked LOST at once, so no
  round places on it, but its attempts are NOT declared lost: a stream can drop
  and the agent reconnect within its lease (a network blip, a provisioner
  restart), listing what still runs, and it keeps them. Only once its lease
  expires does :mod:`strata.provisioner.node_loss` declare the node lost with its
  attempts (a message on the old session then ends it; the agent registers anew);
- a provisioner that is killed closes nothing: its nodes' rows stay READY, and
  placement, which only takes nodes heard from within their lease, stops using
  them a lease after their last word.

``DrainNode`` drains a node through the same path as the fleet's scale-down: no
new placement from its return, running attempts finish, the node DRAINED (and
``NodeDrained``) when the last did; an unknown node is NOT_FOUND naming it, a node
whose stream closed FAILED_PRECONDITION, a second drain changes nothing.
``ListPlacements`` pages the placements oldest first, by node and run when asked.

Queues: ``ApplyQueue`` stores a queue's quota, weight and per-user cap
(:func:`strata.provisioner.domain.queues.queue_policy` checks them; a bad one is
INVALID_ARGUMENT naming the field); ``GetQueue`` and ``ListQueues`` show each
queue with what it uses now, ``GetQueue`` also every waiting attempt with why it
waits and what it will reserve. A queue never applied ("default" among them)
has no quota, weight 1 and no cap. ``ListNodeClasses`` is the fleet's
(:mod:`strata.provisioner.fleet`); without one there are no node classes.

"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import structlog
from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp
from typing_extensions import override

from strata.api.common.v1.refs_pb2 import TaskAttemptRef
from strata.api.common.v1.resources_pb2 import Resources as ResourcesMessage
from strata.api.common.v1.resources_pb2 import ResourceUsage
from strata.api.provisioner.v1 import provisioner_pb2 as pb
from strata.api.provisioner.v1.provisioner_pb2_grpc import ProvisionerServiceServicer
from strata.core.errors import FailedPreconditionError, InvalidArgumentError, NotFoundError
from strata.core.paging import page_size, position_after, token_of
from strata.core.runtime import ServiceContext
from strata.provisioner.domain.draining import AGENT_LEAVING, Drain, NodeGoneError
from strata.provisioner.domain.lease import USAGE_INTERVAL, heartbeat_interval
from strata.provisioner.domain.placement import QueueUse
from strata.provisioner.domain.queues import DEFAULT_QUEUE, QueueError, QueuePolicy, queue_policy
from strata.provisioner.domain.reconcile import CANCEL_GRACE, NOT_CURRENT, AttemptKey, to_cancel
from strata.provisioner.domain.registration import Registration, check
from strata.provisioner.domain.reports import REPORTS
from strata.provisioner.domain.resources import Resources
from strata.provisioner.draining import Drains
from strata.provisioner.placing import Fleet
from strata.provisioner.reports import Reports
from strata.provisioner.store import (
    NodeStore,
    PlacementPosition,
    Queued,
    QueuePolicies,
    QueueStore,
    StoredNode,
    StoredPlacement,
)
from strata.provisioner.wakeups import Wakeups

log = structlog.stdlib.get_logger(__name__)

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000
LIVE_STATES = (pb.NODE_STATE_READY, pb.NODE_STATE_DRAINING, pb.NODE_STATE_DRAINED)


class ProvisionerApi(ProvisionerServiceServicer):
    """ProvisionerService over the nodes and queue of the service's schema."""

    def __init__(
        self,
        context: ServiceContext,
        wakeups: Wakeups,
        delivery_poll: float,
        lease: timedelta,
        fleet: Fleet | None = None,
    ) -> None:
        self._nodes = NodeStore(context.pool, context.schema)
        self._queue = QueueStore(context.pool, context.schema)
        self._policies = QueuePolicies(context.pool, context.schema)
        self._fleet = fleet
        self._reports = Reports(context, wakeups)
        self._drains = Drains(context)
        self._wakeups = wakeups
        self._delivery_poll = delivery_poll
        self._lease = lease

    @override
    async def Connect(
        self, request_iterator: AsyncIterator[pb.ConnectRequest], context: object
    ) -> AsyncIterator[pb.ConnectResponse]:
        try:
            first = await anext(aiter(request_iterator))
        except StopAsyncIteration:
            return
        if not first.HasField("registration"):
            raise InvalidArgumentError(
                "registration", "the first message of a Connect stream must be an AgentRegistration"
            )
        node = await self._nodes.register(check(_registration(first.registration)), _now())
        node_id, session_id = node.registration.node_id, node.session_id
        log.info("node connected", node_id=node_id, capacity=str(node.registration.capacity))
        self._wakeups.queue_changed()
        yield pb.ConnectResponse(
            accepted=pb.AgentAccepted(
                session_id=session_id,
                heartbeat_interval=_duration(heartbeat_interval(self._lease)),
                lease=_duration(self._lease),
                usage_interval=_duration(USAGE_INTERVAL),
            )
        )
        # What the agent runs, as it said last; what it runs already is not sent again.
        running = [_key(a) for a in first.registration.running]
        reader = asyncio.create_task(self._read(request_iterator, node_id, session_id, running))
        sent = set(running)
        cancelled: set[AttemptKey] = set()
        told_to_drain = False
        try:
            with self._wakeups.session(node_id) as woken:
                while not reader.done():
                    woken.clear()
                    drain = None if told_to_drain else await self._nodes.drain_of(node_id)
                    if drain is not None and drain.kept:
                        yield pb.ConnectResponse(drain=_drain_request(drain))
                        told_to_drain = True
                    placements = await self._queue.on_node(node_id)
                    for placement in placements:
                        key = _key(placement.request.attempt)
                        reason = placement.cancel_reason
                        if reason is not None and key not in sent and not placement.running:
                            await self._reports.cancel_unassigned(
                                node_id, placement.request.attempt, reason
                            )
                        elif reason is not None and key not in cancelled:
                            yield pb.ConnectResponse(cancellation=_cancellation(key, reason))
                            cancelled.add(key)
                        elif reason is None and not placement.running and key not in sent:
                            yield pb.ConnectResponse(assignment=_assignment(placement))
                            sent.add(key)
                    placed = {_key(p.request.attempt) for p in placements}
                    for key in to_cancel(running, placed, cancelled):
                        log.info(
                            "attempt not current cancelled", node_id=node_id, attempt=list(key)
                        )
                        yield pb.ConnectResponse(cancellation=_cancellation(key, NOT_CURRENT))
                        cancelled.add(key)
                    await _first(reader, woken, self._delivery_poll)
            reader.result()
        finally:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
            await self._nodes.disconnected(node_id, session_id)
            log.info("node disconnected", node_id=node_id)

    async def _read(
        self,
        requests: AsyncIterator[pb.ConnectRequest],
        node_id: str,
        session_id: str,
        running: list[AttemptKey],
    ) -> None:
        """Renew the lease on every message of the agent and apply its reports, until its
        stream ends or its session is over; keep ``running`` as the agent's last heartbeat
        says."""
        async for message in requests:
            kind = message.WhichOneof("message")
            if kind == "registration":
                raise InvalidArgumentError(
                    "registration", "sent again on the same stream: register once per stream"
                )
            heartbeat = message.heartbeat if message.HasField("heartbeat") else None
            current = await self._nodes.heard(
                node_id,
                session_id,
                _now(),
                usage=heartbeat.usage.SerializeToString() if heartbeat else None,
                warm_bundles=list(heartbeat.warm_bundles) if heartbeat else None,
            )
            if not current:
                log.info("session replaced or node lost: message ignored", node_id=node_id)
                if kind in REPORTS:
                    self._reports.ignore(node_id, message)
                return
            if heartbeat is not None:
                running[:] = [_key(a) for a in heartbeat.running]
            if kind == "leaving":
                await self._leaving(node_id, message.leaving.reason)
            if kind in REPORTS:
                await self._reports.apply(node_id, message)

    async def _leaving(self, node_id: str, reason: str) -> None:
        """The agent stops: its node takes no new work from now, for this session."""
        why = reason or AGENT_LEAVING
        try:
            await self._drains.drain(node_id, Drain(why, kept=False))
        except NodeGoneError:  # declared lost meanwhile: it takes no work either
            return
        log.info("agent leaving: node drained for its session", node_id=node_id, reason=why)

    @override
    async def DrainNode(
        self, request: pb.DrainNodeRequest, context: object
    ) -> pb.DrainNodeResponse:
        if not request.node_id:
            raise InvalidArgumentError("node_id", "is empty: name the node to drain")
        how = Drain(request.reason or "drained by an operator", request.shutdown_when_empty)
        try:
            state = await self._drains.drain(request.node_id, how)
        except NodeGoneError as exc:
            raise FailedPreconditionError(f"node {request.node_id!r}: {exc}") from None
        node = await self._nodes.get(request.node_id)
        if state is None or node is None:
            raise NotFoundError(f"node {request.node_id!r}")
        self._wakeups.placed_on([request.node_id])
        return pb.DrainNodeResponse(node=_node(node))

    @override
    async def ListPlacements(
        self, request: pb.ListPlacementsRequest, context: object
    ) -> pb.ListPlacementsResponse:
        size = page_size(request.page_size)
        found = await self._queue.placements(
            node_id=request.node_id,
            run_id=request.run_id,
            after=_placement_after(request.page_token),
            limit=size + 1,
        )
        page, more = found[:size], len(found) > size
        return pb.ListPlacementsResponse(
            placements=[_placement(p) for p in page],
            next_page_token=_placement_token(page[-1]) if more else "",
        )

    @override
    async def ListNodes(
        self, request: pb.ListNodesRequest, context: object
    ) -> pb.ListNodesResponse:
        if request.page_size < 0:
            raise InvalidArgumentError(
                "page_size", f"must be 0 (default) or more, got {request.page_size}"
            )
        size = min(request.page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        states = list(request.states) or list(LIVE_STATES)
        found = await self._nodes.list(states, after=_after(request.page_token), limit=size + 1)
        page = found[:size]
        more = len(found) > size
        last = page[-1].registration.node_id if more else ""
        return pb.ListNodesResponse(
            nodes=[_node(n) for n in page],
            next_page_token=base64.urlsafe_b64encode(last.encode()).decode() if more else "",
        )

    @override
    async def GetNode(self, request: pb.GetNodeRequest, context: object) -> pb.GetNodeResponse:
        if not request.node_id:
            raise InvalidArgumentError("node_id", "is empty: name the node")
        node = await self._nodes.get(request.node_id)
        if node is None:
            raise NotFoundError(f"node {request.node_id!r}")
        placements = await self._queue.on_node(request.node_id)
        return pb.GetNodeResponse(node=_node(node), placements=[_placement(p) for p in placements])

    @override
    async def GetQueue(self, request: pb.GetQueueRequest, context: object) -> pb.GetQueueResponse:
        name = request.name or DEFAULT_QUEUE
        policy = await self._policies.get(name)
        use = (await self._queue.use()).get(name, QueueUse())
        waiting = await self._queue.waiting(queue=name)
        queue = _queue(policy, use, len(waiting))
        queue.pending.extend(_pending(q) for q in waiting)
        return pb.GetQueueResponse(queue=queue)

    @override
    async def ApplyQueue(
        self, request: pb.ApplyQueueRequest, context: object
    ) -> pb.ApplyQueueResponse:
        try:
            policy = queue_policy(
                request.name,
                dict(request.quota),
                request.weight,
                request.max_running_per_user,
            )
        except QueueError as exc:
            raise InvalidArgumentError(exc.field, exc.message) from None
        await self._policies.apply(policy)
        log.info("queue applied", queue=policy.name, quota=str(policy.quota))
        use = (await self._queue.use()).get(policy.name, QueueUse())
        waiting = (await self._queue.waiting_counts()).get(policy.name, 0)
        return pb.ApplyQueueResponse(queue=_queue(policy, use, waiting))

    @override
    async def ListQueues(
        self, request: pb.ListQueuesRequest, context: object
    ) -> pb.ListQueuesResponse:
        policies = await self._policies.all()
        use = await self._queue.use()
        waiting = await self._queue.waiting_counts()
        names = sorted({DEFAULT_QUEUE, *policies, *use, *waiting})
        return pb.ListQueuesResponse(
            queues=[
                _queue(
                    policies.get(name) or QueuePolicy(name),
                    use.get(name, QueueUse()),
                    waiting.get(name, 0),
                )
                for name in names
            ]
        )

    @override
    async def ListNodeClasses(
        self, request: pb.ListNodeClassesRequest, context: object
    ) -> pb.ListNodeClassesResponse:
        classes = await self._fleet.describe() if self._fleet is not None else []
        return pb.ListNodeClassesResponse(node_classes=classes)


def _queue(policy: QueuePolicy, use: QueueUse, waiting: int) -> pb.Queue:
    """A queue as people read it: its policy, what it uses, how many wait (no pending)."""
    quota = policy.quota.as_resources()
    return pb.Queue(
        name=policy.name,
        quota=None if quota is None else _resources(quota),
        reserved=_resources(use.reserved),
        weight=policy.weight,
        max_running_per_user=policy.max_running_per_user,
        running=sum(use.running_by_user.values()),
        waiting=waiting,
        running_by_user=dict(use.running_by_user),
        quota_limits=policy.quota.as_quantities(),
    )


def _pending(queued: Queued) -> pb.PendingTask:
    request = queued.request
    return pb.PendingTask(
        attempt=request.attempt,
        workflow_name=request.workflow_name,
        priority=request.priority,
        limits=request.resources,
        requested_at=_timestamp(queued.attempt.requested_at),
        waiting_for=queued.waiting_for,
        user=request.user,
        reserved=_resources(queued.reserve) if queued.reserve is not None else None,
    )


async def _first(reader: asyncio.Task[None], woken: asyncio.Event, timeout: float) -> None:
    """Until the agent's stream ends, the node has something new, or ``timeout`` passed."""
    waking = asyncio.ensure_future(woken.wait())
    try:
        await asyncio.wait({reader, waking}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        waking.cancel()


def _registration(message: pb.AgentRegistration) -> Registration:
    c = message.capacity
    return Registration(
        node_id=message.node_id,
        hostname=message.hostname,
        capacity=Resources(c.cpu_millis, c.memory_bytes, c.gpus),
        labels=dict(message.labels),
        agent_version=message.agent_version,
        warm_bundles=tuple(message.warm_bundles),
    )


def _after(token: str) -> str:
    try:
        return base64.urlsafe_b64decode(token.encode()).decode() if token else ""
    except (binascii.Error, UnicodeDecodeError):
        raise InvalidArgumentError(
            "page_token", "is not a token from a previous ListNodes reply"
        ) from None


def _placement_token(last: StoredPlacement) -> str:
    a = last.request.attempt
    return token_of(json.dumps([last.placed_at.isoformat(), a.run_id, a.task_id, a.attempt]))


def _placement_after(token: str) -> PlacementPosition | None:
    """Where a ListPlacements page starts, from the previous page's token."""
    position = position_after(token)
    if not position:
        return None
    try:
        placed_at, run_id, task_id, attempt = json.loads(position)
        return (datetime.fromisoformat(placed_at), str(run_id), str(task_id), int(attempt))
    except (ValueError, TypeError):
        raise InvalidArgumentError(
            "page_token", "is not a token from a previous ListPlacements reply"
        ) from None


def _drain_request(drain: Drain) -> pb.DrainRequest:
    return pb.DrainRequest(reason=drain.reason, shutdown_when_empty=drain.shutdown_when_empty)


def _resources(amounts: Resources) -> ResourcesMessage:
    return ResourcesMessage(
        cpu_millis=amounts.cpu_millis, memory_bytes=amounts.memory_bytes, gpus=amounts.gpus
    )


def _node(stored: StoredNode) -> pb.Node:
    registration = stored.registration
    return pb.Node(
        node_id=registration.node_id,
        hostname=registration.hostname,
        state=stored.state,
        capacity=_resources(registration.capacity),
        reserved=_resources(stored.reserved),
        usage=ResourceUsage.FromString(stored.usage) if stored.usage else None,
        labels=dict(registration.labels),
        agent_version=registration.agent_version,
        joined_at=_timestamp(stored.joined_at),
        last_seen_at=_timestamp(stored.last_seen_at),
        placement_count=stored.placement_count,
    )


def _placement(stored: StoredPlacement) -> pb.Placement:
    request = stored.request
    return pb.Placement(
        attempt=request.attempt,
        workflow_name=request.workflow_name,
        node_id=stored.node_id,
        queue=request.queue or DEFAULT_QUEUE,
        priority=request.priority,
        limits=_limits(stored),
        reserved=_resources(stored.reserved),
        running=stored.running,
        placed_at=_timestamp(stored.placed_at),
        user=stored.user,
        expected_run_time=_run_time(stored.expected_seconds),
    )


def _run_time(seconds: float | None) -> Duration | None:
    if seconds is None:
        return None
    run_time = Duration()
    run_time.FromTimedelta(timedelta(seconds=seconds))
    return run_time


def _assignment(stored: StoredPlacement) -> pb.TaskAssignment:
    request = stored.request
    return pb.TaskAssignment(
        attempt=request.attempt,
        workflow_name=request.workflow_name,
        entrypoint=request.entrypoint,
        bundle=request.bundle,
        args=request.args,
        upstream_outputs=dict(request.upstream_outputs),
        limits=_limits(stored),
        reserved=_resources(stored.reserved),
        timeout=request.timeout if request.HasField("timeout") else None,
    )


def _limits(stored: StoredPlacement) -> ResourcesMessage:
    """The hard limits of a placement: the request's, memory raised after running out."""
    return stored.request.resources if stored.limits is None else _resources(stored.limits)


def _cancellation(key: AttemptKey, reason: str) -> pb.TaskCancellation:
    run_id, task_id, attempt = key
    return pb.TaskCancellation(
        attempt=TaskAttemptRef(run_id=run_id, task_id=task_id, attempt=attempt),
        reason=reason,
        grace_period=_duration(CANCEL_GRACE),
    )


def _key(attempt: TaskAttemptRef) -> AttemptKey:
    return (attempt.run_id, attempt.task_id, attempt.attempt)


def _timestamp(moment: datetime | None) -> Timestamp | None:
    if moment is None:
        return None
    stamp = Timestamp()
    stamp.FromDatetime(moment)
    return stamp


def _duration(span: timedelta) -> Duration:
    duration = Duration()
    duration.FromTimedelta(span)
    return duration


def _now() -> datetime:
    return datetime.now(UTC)

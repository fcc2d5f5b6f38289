"""``strata queues list|show|apply`` and ``strata nodes classes``: the provisioner's
queues (quota, weight, per-user cap, what they use and who waits, and why) and the
node classes its providers start when attempts wait for room.

A refused ``apply`` is one line naming the field the provisioner refused and what
it expected (``quota.memory: "8GB" is not a quantity ...``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime

from rich.console import Console, Group
from rich.table import Table

from strata.api.common.v1 import resources_pb2
from strata.api.provisioner.v1 import provisioner_pb2 as pb
from strata.api.provisioner.v1.provisioner_pb2_grpc import ProvisionerServiceStub
from strata.sdk.client import CommandError, answer, service_channel

PROVISIONER = "strata.provisioner.v1.ProvisionerService"


async def list_queues(out: Console) -> None:
    """One row per queue: quota, reserved, weight, per-user cap, running and waiting."""
    async with service_channel("provisioner", idempotent=(PROVISIONER,)) as channel:
        reply: pb.ListQueuesResponse = await answer(
            ProvisionerServiceStub(channel).ListQueues(pb.ListQueuesRequest()),
            "queues",
            "provisioner",
        )
    out.print(queue_table(reply.queues))


async def show_queue(name: str, out: Console) -> None:
    """The queue's policy and use, then each waiting attempt in placement order and why."""
    async with service_channel("provisioner", idempotent=(PROVISIONER,)) as channel:
        reply: pb.GetQueueResponse = await answer(
            ProvisionerServiceStub(channel).GetQueue(pb.GetQueueRequest(name=name)),
            f"queue {name!r}",
            "provisioner",
        )
    out.print(queue_detail(reply.queue, datetime.now(UTC)))


async def apply_queue(
    name: str,
    quota: Sequence[str],
    weight: float,
    max_running_per_user: int,
    out: Console,
) -> None:
    """Create or change a queue; ``quota`` items are ``cpu=4``, ``memory=8Gi``, ``gpu=1``."""
    request = pb.ApplyQueueRequest(
        name=name,
        quota=_quota(quota),
        weight=weight,
        max_running_per_user=max_running_per_user,
    )
    async with service_channel("provisioner") as channel:
        reply: pb.ApplyQueueResponse = await answer(
            ProvisionerServiceStub(channel).ApplyQueue(request), f"queue {name!r}", "provisioner"
        )
    out.print(queue_table([reply.queue]))


async def list_node_classes(out: Console) -> None:
    """One row per node class: provider, size, min/max, nodes starting and connected."""
    async with service_channel("provisioner", idempotent=(PROVISIONER,)) as channel:
        reply: pb.ListNodeClassesResponse = await answer(
            ProvisionerServiceStub(channel).ListNodeClasses(pb.ListNodeClassesRequest()),
            "node classes",
            "provisioner",
        )
    if not reply.node_classes:
        out.print(
            "no node classes: nodes join by themselves "
            "(set STRATA_PROVISIONER_NODE_CLASSES to start them on demand)"
        )
        return
    out.print(node_class_table(reply.node_classes))


def queue_table(queues: Sequence[pb.Queue]) -> Table:
    table = Table("queue", "quota", "reserved", "weight", "per-user cap", "running", "waiting")
    for queue in queues:
        table.add_row(
            queue.name,
            _limits(queue.quota_limits),
            _amounts(queue.reserved),
            f"{queue.weight:g}",
            str(queue.max_running_per_user) if queue.max_running_per_user else "none",
            str(queue.running),
            str(queue.waiting),
        )
    return table


def queue_detail(queue: pb.Queue, now: datetime) -> Group:
    """The queue's row, who runs how many attempts, and the waiting attempts."""
    parts: list[Table | str] = [queue_table([queue])]
    if queue.running_by_user:
        parts.append(_by_user(queue.running_by_user))
    if not queue.pending:
        parts.append("nothing waits")
        return Group(*parts)
    waiting = Table(
        "run", "task", "attempt", "user", "priority", "asks", "reserves", "waits", "why"
    )
    for task in queue.pending:
        waiting.add_row(
            task.attempt.run_id,
            task.attempt.task_id,
            str(task.attempt.attempt),
            task.user,
            str(task.priority),
            _amounts(task.limits),
            _amounts(task.reserved) if task.HasField("reserved") else "",
            _waited(task, now),
            task.waiting_for or "not looked at yet",
        )
    parts.append(waiting)
    if queue.waiting > len(queue.pending):
        parts.append(f"... and {queue.waiting - len(queue.pending)} more waiting")
    return Group(*parts)


def node_class_table(classes: Sequence[pb.NodeClass]) -> Table:
    table = Table("class", "provider", "size", "min", "max", "starting", "connected", "note")
    for node_class in classes:
        note = node_class.message
        if not node_class.provider_serving:
            note = f"provider not serving: {note}"
        table.add_row(
            node_class.name,
            node_class.provider,
            _amounts(node_class.capacity),
            str(node_class.min_nodes),
            str(node_class.max_nodes),
            str(node_class.starting),
            str(node_class.connected),
            note,
        )
    return table


def _by_user(running: Mapping[str, int]) -> Table:
    table = Table("user", "placed or running")
    for user, count in sorted(running.items()):
        table.add_row(user or "(no user)", str(count))
    return table


def _quota(items: Sequence[str]) -> dict[str, str]:
    quota: dict[str, str] = {}
    for item in items:
        kind, sep, amount = item.partition("=")
        if not sep or not kind.strip() or not amount.strip():
            raise CommandError(
                f"--quota {item!r}: expected RESOURCE=AMOUNT, e.g. cpu=4, memory=8Gi, gpu=1"
            )
        quota[kind.strip()] = amount.strip()
    return quota


def _limits(limits: Mapping[str, str]) -> str:
    """``cpu 4, memory 8Gi``: the limited kinds as applied; the others have no limit."""
    if not limits:
        return "no limit"
    return ", ".join(
        f"{kind} {limits[kind]}" for kind in ("cpu", "memory", "gpu") if kind in limits
    )


def _amounts(resources: resources_pb2.Resources) -> str:
    text = f"{resources.cpu_millis / 1000:g} CPU, {resources.memory_bytes / 2**30:.1f}Gi"
    return f"{text}, {resources.gpus} GPU" if resources.gpus else text


def _waited(task: pb.PendingTask, now: datetime) -> str:
    if not task.HasField("requested_at"):
        return ""
    seconds = (now - task.requested_at.ToDatetime(UTC)).total_seconds()
    return f"{max(seconds, 0):.0f}s"

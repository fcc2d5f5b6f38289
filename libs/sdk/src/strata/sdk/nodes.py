"""``strata nodes list|drain|placements``: the provisioner's nodes, what they offer and what
is reserved, draining one, and what runs where."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Protocol, TypeVar

from rich.console import Console
from rich.table import Table

from strata.api.common.v1 import resources_pb2
from strata.api.provisioner.v1 import provisioner_pb2 as pb
from strata.api.provisioner.v1.provisioner_pb2_grpc import ProvisionerServiceStub
from strata.sdk.client import CommandError, answer, service_channel

PROVISIONER = "strata.provisioner.v1.ProvisionerService"
STATES: dict[str, pb.NodeState.ValueType] = {
    name.removeprefix("NODE_STATE_").lower(): value
    for name, value in pb.NodeState.items()
    if value != pb.NODE_STATE_UNSPECIFIED
}
"""State names as the command takes and prints them: ready, draining, drained, lost."""


class _Page(Protocol):
    @property
    def next_page_token(self) -> str: ...


P = TypeVar("P", bound=_Page)


async def _pages(ask: Callable[[str], Awaitable[P]]) -> AsyncIterator[P]:
    """Every page of a paged List call, ``ask(page_token)`` asking for one."""
    token = ""
    while True:
        page = await ask(token)
        yield page
        token = page.next_page_token
        if not token:
            return


async def list_nodes(states: Sequence[str], out: Console) -> None:
    """One row per node: state, CPU, memory and GPUs reserved of capacity, attempts, labels."""
    wanted = [_state(name) for name in states]
    nodes: list[pb.Node] = []
    async with service_channel("provisioner", idempotent=(PROVISIONER,)) as channel:
        stub = ProvisionerServiceStub(channel)

        def ask(token: str) -> Awaitable[pb.ListNodesResponse]:
            request = pb.ListNodesRequest(states=wanted, page_token=token)
            return answer(stub.ListNodes(request), "nodes", "provisioner")

        async for reply in _pages(ask):
            nodes.extend(reply.nodes)
    if not nodes:
        out.print("no nodes (agents register with the provisioner when they start)")
        return
    out.print(node_table(nodes))


async def drain_node(node_id: str, reason: str, shutdown_when_empty: bool, out: Console) -> None:
    """Drain ``node_id`` (admins only) and say where it stands: draining while attempts run
    on it, drained once none does."""
    request = pb.DrainNodeRequest(
        node_id=node_id, reason=reason, shutdown_when_empty=shutdown_when_empty
    )
    async with service_channel("provisioner", idempotent=(PROVISIONER,)) as channel:
        reply: pb.DrainNodeResponse = await answer(
            ProvisionerServiceStub(channel).DrainNode(request),
            f"node {node_id!r}",
            "provisioner",
            not_found=f"no node {node_id!r} (strata nodes list shows them)",
        )
    node = reply.node
    if node.state == pb.NODE_STATE_DRAINED:
        out.print(f"node {node_id} is drained: nothing runs on it, and nothing new will")
    else:
        out.print(
            f"node {node_id} is draining: no new attempt goes there; "
            f"{node.placement_count} still running will finish"
        )


async def list_placements(node_id: str, run_id: str, out: Console) -> None:
    """One row per attempt placed (oldest first): run, task, attempt, node, queue, user,
    reserved, expected run time, running or not, since when."""
    placements: list[pb.Placement] = []
    async with service_channel("provisioner", idempotent=(PROVISIONER,)) as channel:
        stub = ProvisionerServiceStub(channel)

        def ask(token: str) -> Awaitable[pb.ListPlacementsResponse]:
            request = pb.ListPlacementsRequest(node_id=node_id, run_id=run_id, page_token=token)
            return answer(stub.ListPlacements(request), "placements", "provisioner")

        async for reply in _pages(ask):
            placements.extend(reply.placements)
    if not placements:
        out.print("no attempts placed")
        return
    table = Table(
        "run", "task", "attempt", "node", "queue", "user", "reserved", "expected", "state", "since"
    )
    for p in placements:
        table.add_row(
            p.attempt.run_id,
            p.attempt.task_id,
            str(p.attempt.attempt),
            p.node_id,
            p.queue,
            p.user,
            f"{_cores(p.reserved)} CPU, {_gib(p.reserved)}"
            + (f", {p.reserved.gpus} GPU" if p.reserved.gpus else ""),
            _run_time(p),
            "running" if p.running else "placed",
            p.placed_at.ToDatetime().strftime("%H:%M:%S") if p.HasField("placed_at") else "",
        )
    out.print(table)


def node_table(nodes: Sequence[pb.Node]) -> Table:
    table = Table("node", "state", "cpu", "memory", "gpu", "attempts", "labels", "last seen")
    for node in nodes:
        table.add_row(
            node.node_id,
            pb.NodeState.Name(node.state).removeprefix("NODE_STATE_").lower(),
            f"{_cores(node.reserved)}/{_cores(node.capacity)}",
            f"{_gib(node.reserved)}/{_gib(node.capacity)}",
            f"{node.reserved.gpus}/{node.capacity.gpus}",
            str(node.placement_count),
            ", ".join(f"{k}={v}" for k, v in sorted(node.labels.items())),
            node.last_seen_at.ToDatetime().strftime("%H:%M:%S")
            if node.HasField("last_seen_at")
            else "",
        )
    return table


def _run_time(placement: pb.Placement) -> str:
    """How long the attempt is expected to run, or "-" while its task has too few runs."""
    if not placement.HasField("expected_run_time"):
        return "-"
    seconds = placement.expected_run_time.ToTimedelta().total_seconds()
    return f"{seconds:.1f}s" if seconds < 60 else f"{seconds / 60:.0f}m"


def _state(name: str) -> pb.NodeState.ValueType:
    try:
        return STATES[name.lower()]
    except KeyError:
        known = ", ".join(STATES)
        raise CommandError(f"--state {name!r}: expected one of {known}") from None


def _cores(resources: resources_pb2.Resources) -> str:
    return f"{resources.cpu_millis / 1000:g}"


def _gib(resources: resources_pb2.Resources) -> str:
    return f"{resources.memory_bytes / 2**30:.1f}Gi"

"""``strata nodes list``: the provisioner's nodes, what they offer and what is reserved."""

from __future__ import annotations

from collections.abc import Sequence

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


async def list_nodes(states: Sequence[str], out: Console) -> None:
    """One row per node: state, CPU, memory and GPUs reserved of capacity, attempts, labels."""
    wanted = [_state(name) for name in states]
    nodes: list[pb.Node] = []
    token = ""
    async with service_channel("provisioner", idempotent=(PROVISIONER,)) as channel:
        stub = ProvisionerServiceStub(channel)
        while True:
            request = pb.ListNodesRequest(states=wanted, page_token=token)
            reply: pb.ListNodesResponse = await answer(
                stub.ListNodes(request), "nodes", "provisioner"
            )
            nodes.extend(reply.nodes)
            token = reply.next_page_token
            if not token:
                break
    if not nodes:
        out.print("no nodes (agents register with the provisioner when they start)")
        return
    out.print(node_table(nodes))


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

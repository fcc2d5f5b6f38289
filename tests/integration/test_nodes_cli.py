"""``strata nodes list|drain`` against a real provisioner with real agents registered on it.

What operators rely on: a registered agent is listed with its capacity; ``strata
nodes drain --shutdown`` on an idle node drains it and its agent exits cleanly
(exit 0, so a supervisor does not restart it as failed); an agent stopped with
SIGTERM says it is leaving before it goes, so its node is drained (``NodeDrained``)
rather than placeable until the stream closes.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from conftest import STRATA
from service_processes import ServiceProcess, free_port, running

from strata.api.common.v1.envelope_pb2 import Envelope
from strata.api.provisioner.v1 import provisioner_pb2 as pb
from strata.core.bus import Bus
from strata.core.settings import KafkaSettings, load
from strata.core.topics import NODES_EVENTS

GIB = 2**30
BOUND = 60.0


@pytest.fixture(scope="module")
async def provisioner(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[ServiceProcess]:
    async with running("provisioner", tmp_path_factory.mktemp("nodes")) as service:
        yield service


def _nodes(provisioner: ServiceProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return _strata_nodes(provisioner, "list", *args)


def _strata_nodes(provisioner: ServiceProcess, *args: str) -> subprocess.CompletedProcess[str]:
    port = provisioner.address.rsplit(":", 1)[1]
    return subprocess.run(
        [STRATA, "nodes", *args],
        env={**os.environ, "STRATA_SERVICE_PROVISIONER_PORT": port, "COLUMNS": "200"},
        capture_output=True,
        text=True,
        check=False,
    )


async def test_a_registered_agent_is_listed_with_its_capacity_and_labels(
    provisioner: ServiceProcess, tmp_path: Path
) -> None:
    node_id = f"node-{uuid.uuid4().hex[:8]}"
    agent = {
        "STRATA_AGENT_PROVISIONER": provisioner.address,
        "STRATA_AGENT_NODE_ID": node_id,
        "STRATA_AGENT_CPU_MILLIS": "6000",
        "STRATA_AGENT_MEMORY_BYTES": str(12 * GIB),
        "STRATA_AGENT_GPUS": "2",
        "STRATA_AGENT_LABELS": json.dumps({"zone": "eu-1"}),
    }
    async with running("agent", tmp_path, **agent):
        async with asyncio.timeout(BOUND):
            while node_id not in (listed := _nodes(provisioner)).stdout:
                assert listed.returncode == 0, listed.stderr
                await asyncio.sleep(0.2)
    row = next(line for line in listed.stdout.splitlines() if node_id in line)
    cells = [cell.strip() for cell in row.strip("│┃ ").split("│")]
    assert cells[1:5] == ["ready", "0/6", "0.0Gi/12.0Gi", "0/2"], row
    assert cells[6] == "zone=eu-1", row


def test_an_unknown_state_is_refused_naming_the_choices(provisioner: ServiceProcess) -> None:
    refused = _nodes(provisioner, "--state", "sleeping")

    assert refused.returncode == 1
    assert "--state 'sleeping': expected one of ready, draining, drained, lost" in refused.stderr


def test_an_unreachable_provisioner_is_one_line_naming_it() -> None:
    refused = subprocess.run(
        [STRATA, "nodes", "list"],
        env={**os.environ, "STRATA_SERVICE_PROVISIONER_PORT": str(free_port())},
        capture_output=True,
        text=True,
        check=False,
    )

    assert refused.returncode == 1
    assert refused.stderr.startswith("the provisioner is not reachable"), refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1


@pytest.fixture
async def drained() -> AsyncIterator[asyncio.Queue[pb.NodeDrained]]:
    """Every ``NodeDrained`` published from now on."""
    bus = Bus("nodes-cli-test", kafka=load(KafkaSettings))
    heard: asyncio.Queue[pb.NodeDrained] = asyncio.Queue()
    events = bus.consumer(NODES_EVENTS, group=f"nodes-cli-test-{uuid.uuid4().hex[:8]}")

    @events.on(pb.NodeDrained)
    async def on_drained(event: pb.NodeDrained, envelope: Envelope) -> None:
        heard.put_nowait(event)

    async with bus:
        yield heard


async def _drained_event(heard: asyncio.Queue[pb.NodeDrained], node_id: str) -> pb.NodeDrained:
    async with asyncio.timeout(BOUND):
        while True:
            event = await heard.get()
            if event.node_id == node_id:
                return event


def _agent(provisioner: ServiceProcess, node_id: str) -> dict[str, str]:
    return {
        "STRATA_AGENT_PROVISIONER": provisioner.address,
        "STRATA_AGENT_NODE_ID": node_id,
        "STRATA_AGENT_CPU_MILLIS": "2000",
        "STRATA_AGENT_MEMORY_BYTES": str(2 * GIB),
    }


async def _until_listed(provisioner: ServiceProcess, node_id: str, state: str) -> None:
    async with asyncio.timeout(BOUND):
        while True:
            listed = await asyncio.to_thread(_nodes, provisioner, "--state", state)
            assert listed.returncode == 0, listed.stderr
            if node_id in listed.stdout:
                return
            await asyncio.sleep(0.2)


async def test_drain_with_shutdown_drains_an_idle_node_and_its_agent_exits_cleanly(
    provisioner: ServiceProcess, tmp_path: Path, drained: asyncio.Queue[pb.NodeDrained]
) -> None:
    node_id = f"node-{uuid.uuid4().hex[:8]}"
    async with running("agent", tmp_path, **_agent(provisioner, node_id)) as agent:
        await _until_listed(provisioner, node_id, "ready")
        done = await asyncio.to_thread(
            _strata_nodes, provisioner, "drain", node_id, "--reason", "retire", "--shutdown"
        )
        assert done.returncode == 0, done.stderr
        assert f"node {node_id} is drained" in done.stdout, done.stdout
        async with asyncio.timeout(BOUND):
            assert await agent.process.wait() == 0, agent.log.read_text()
    assert (await _drained_event(drained, node_id)).reason == "retire"

    unknown = await asyncio.to_thread(_strata_nodes, provisioner, "drain", "no-such-node")
    assert unknown.returncode == 1
    assert "no node 'no-such-node'" in unknown.stderr, unknown.stderr


async def test_an_agent_stopped_with_sigterm_drains_its_node_before_it_goes(
    provisioner: ServiceProcess, tmp_path: Path, drained: asyncio.Queue[pb.NodeDrained]
) -> None:
    node_id = f"node-{uuid.uuid4().hex[:8]}"
    async with running("agent", tmp_path, **_agent(provisioner, node_id)):
        await _until_listed(provisioner, node_id, "ready")
    # Leaving the block sent SIGTERM: the agent said it leaves before its stream closed.
    assert (await _drained_event(drained, node_id)).reason == "the agent is stopping"

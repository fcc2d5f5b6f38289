"""``strata nodes list`` against a real provisioner with a real agent registered on it."""

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

GIB = 2**30
BOUND = 60.0


@pytest.fixture(scope="module")
async def provisioner(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[ServiceProcess]:
    async with running("provisioner", tmp_path_factory.mktemp("nodes")) as service:
        yield service


def _nodes(provisioner: ServiceProcess, *args: str) -> subprocess.CompletedProcess[str]:
    port = provisioner.address.rsplit(":", 1)[1]
    return subprocess.run(
        [STRATA, "nodes", "list", *args],
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

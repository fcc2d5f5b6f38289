"""Reserving means (``STRATA_PROVISIONER_RESERVE_MEMORY_FROM=mean``, the default) on a
real ``python -m strata.provisioner`` with a real ``python -m strata.agent``.

What users rely on: a task that holds little memory most of its run and much more
for a moment is placed on what it usually holds (the memory its past attempts held
on average, as their agent measured it), not on its peak; its request stays the
hard limit.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator

import pytest
from service_processes import free_port, running
from test_provisioner_sizing import (
    BUNDLE,
    GIB,
    HUGE,
    MIB,
    S3,
    TOKENS,
    Heard,
    _request,
    task_events,
)

from strata.api.provisioner.v1 import provisioner_pb2 as pb
from strata.core.blobs import open_blob_store
from strata.core.bus import Bus
from strata.sdk.workflows.bundle import store

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
async def provisioner(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[str]:
    """A provisioner as it starts by default (reserving means), and one agent offering
    64 GiB (and more CPU than any other node)."""
    async with open_blob_store(S3) as blobs:
        await store(BUNDLE, blobs, S3)
    folder = tmp_path_factory.mktemp("sizing-means")
    port = free_port()
    tokens = json.dumps(TOKENS)
    agent_env = {
        "STRATA_AUTH_TOKENS": tokens,
        "STRATA_AGENT_PROVISIONER": f"127.0.0.1:{port}",
        "STRATA_AGENT_NODE_ID": f"sizing-means-{uuid.uuid4().hex[:8]}",
        "STRATA_AGENT_CPU_MILLIS": str(HUGE),
        "STRATA_AGENT_MEMORY_BYTES": str(64 * GIB),
        "STRATA_AGENT_STATE_DIR": str(folder / "agent-state"),
        "STRATA_AGENT_RECONNECT_MAX": "1",
        "STRATA_BLOB_BACKEND": "s3",
        "STRATA_AUTH_CLIENT_TOKEN": "agent-token",
    }
    async with (
        running(
            "provisioner",
            folder,
            STRATA_AUTH_TOKENS=tokens,
            STRATA_SERVICE_PROVISIONER_PORT=str(port),
        ) as service,
        running("agent", folder, **agent_env),
    ):
        yield service.address


@pytest.fixture
async def events(provisioner: str) -> AsyncIterator[tuple[Bus, Heard]]:
    """The bus to publish requests on, and what this module's provisioner announces."""
    async with task_events("sizing-means-test") as heard:
        yield heard


async def test_a_task_that_peaks_briefly_is_placed_on_what_it_usually_holds(
    events: tuple[Bus, Heard],
) -> None:
    bus, heard = events
    workflow = f"sizing-means-{uuid.uuid4().hex[:8]}"
    asked = 768 * MIB
    args = {"base_mib": 16, "peak_mib": 400}
    past = [_request(workflow, asked, args, "burst") for _ in range(3)]
    for request in past:
        await bus.publish(request)
    peaks, means = [], []
    for request in past:
        placed, finished = await heard.ended(request.attempt)
        assert isinstance(finished, pb.TaskFinished), finished
        assert placed.reserved == request.resources  # nothing learned yet: the request
        peaks.append(finished.peak_usage.memory_bytes)
        means.append(finished.mean_memory_bytes)
    assert min(peaks) > 400 * MIB
    assert all(0 < mean < peak / 2 for mean, peak in zip(means, peaks, strict=True)), means

    request = _request(workflow, asked, args, "burst")
    await bus.publish(request)
    placed, finished = await heard.ended(request.attempt)
    assert placed.limits == request.resources
    assert max(means) <= placed.reserved.memory_bytes < min(peaks)
    assert isinstance(finished, pb.TaskFinished), finished

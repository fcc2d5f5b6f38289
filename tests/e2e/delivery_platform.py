"""The delivery-time example (``examples/delivery_time``) on real services, for its e2e story.

:func:`platform` starts the six services on the tests' stack, each on free ports,
and applies the example's feature views and workflow with the CLI, as its README
says: ``strata workflow apply`` stores the example's folder as the bundle the agent
runs the tasks from. The
example's modules are imported under a namespace of the test's own
(``DELIVERY_NAMESPACE``), so its topic, views, workflow and model are the test's.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import grpc
from service_processes import ServiceProcess, running

from strata.api.data.v1.data_pb2 import DataArrived
from strata.api.scheduler.v1 import scheduler_pb2 as spb
from strata.api.scheduler.v1.scheduler_pb2_grpc import SchedulerServiceStub
from strata.core import kafka
from strata.core.envelope import open_envelope
from strata.core.settings import KafkaSettings, load
from strata.core.topics import DATA_ARRIVED
from tests.stack_session import STRATA

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "delivery_time"
BOUND = 600.0
"""Guard against a hang: a whole run (seven tasks, two trainings) takes minutes on a two-core
machine shared with other work."""
ADMIN = (("authorization", "Bearer dev-admin-token"),)
ARRIVED = DATA_ARRIVED.name
TERMINAL = (spb.RUN_STATE_SUCCEEDED, spb.RUN_STATE_FAILED, spb.RUN_STATE_CANCELLED)


@dataclass(frozen=True)
class Example:
    """The example's modules, imported under the test's namespace."""

    project: Any
    orders: Any
    landing: Any


@dataclass(frozen=True)
class Platform:
    example: Example
    services: dict[str, ServiceProcess]
    environment: dict[str, str]
    """What every process of the story runs with (ports, namespace, the S3 blob store)."""

    @property
    def scheduler(self) -> str:
        return self.services["scheduler"].address


@contextlib.contextmanager
def example_modules(namespace: str) -> Iterator[Example]:
    """Import the example's modules with ``DELIVERY_NAMESPACE=namespace``; forget them after,
    and put the environment back as it was (a running platform's namespace and blob store
    stay the test process's own)."""
    names = ("project", "orders", "landing")
    previous = {
        name: os.environ.get(name) for name in ("DELIVERY_NAMESPACE", "STRATA_BLOB_BACKEND")
    }
    os.environ["DELIVERY_NAMESPACE"] = namespace
    os.environ["STRATA_BLOB_BACKEND"] = "s3"
    sys.path.insert(0, str(EXAMPLE))
    try:
        loaded: list[ModuleType] = [importlib.import_module(name) for name in names]
        yield Example(*loaded)
    finally:
        sys.path.remove(str(EXAMPLE))
        for name in names:
            sys.modules.pop(name, None)
        for name, value in previous.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@contextlib.asynccontextmanager
async def platform(folder: Path) -> AsyncIterator[Platform]:
    """The six services running the example, its views and workflow applied."""
    namespace = f"_e2e{uuid.uuid4().hex[:6]}"
    with example_modules(namespace) as example:
        # example_modules put the namespace and the S3 blob store in os.environ: every
        # process started below inherits them
        common = {"DELIVERY_NAMESPACE": namespace, "STRATA_BLOB_BACKEND": "s3"}
        await example.landing.create_orders_topic()
        async with contextlib.AsyncExitStack() as stack:
            services: dict[str, ServiceProcess] = {}
            for name in ("scheduler", "streamer", "provisioner"):
                services[name] = await stack.enter_async_context(running(name, folder))
            # The registry asks the scheduler where a lineage's attempts ran.
            services["registry"] = await stack.enter_async_context(
                running("registry", folder, STRATA_REGISTRY_SCHEDULER=services["scheduler"].address)
            )
            ports = {
                f"STRATA_SERVICE_{name.upper()}_PORT": s.address.rsplit(":", 1)[1]
                for name, s in services.items()
            }
            environment = {**common, **ports}
            services["agent"] = await stack.enter_async_context(
                running(
                    "agent",
                    folder,
                    STRATA_AGENT_PROVISIONER=services["provisioner"].address,
                    STRATA_AGENT_NODE_ID=f"delivery-node-{namespace}",
                    STRATA_SERVICE_SCHEDULER_PORT=ports["STRATA_SERVICE_SCHEDULER_PORT"],
                    STRATA_SERVICE_STREAMER_PORT=ports["STRATA_SERVICE_STREAMER_PORT"],
                    STRATA_SERVICE_REGISTRY_PORT=ports["STRATA_SERVICE_REGISTRY_PORT"],
                )
            )
            services["gateway"] = await stack.enter_async_context(
                running(
                    "gateway",
                    folder,
                    STRATA_GATEWAY_MODELS=json.dumps(
                        {example.project.MODEL: ["champion", "challenger"]}
                    ),
                    STRATA_GATEWAY_REGISTRY=services["registry"].address,
                    STRATA_GATEWAY_STREAMER=services["streamer"].address,
                )
            )
            found = Platform(example, services, environment)
            cli(found, "features", "apply", "features.py")
            cli(found, "workflow", "apply", "workflow.py")
            yield found


def cli(platform: Platform, *args: str) -> str:
    """``strata <args>`` typed in the example's folder, as its README says; its output."""
    done = subprocess.run(
        [str(STRATA), *args],
        cwd=EXAMPLE,
        env={**os.environ, **platform.environment},
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


@contextlib.asynccontextmanager
async def landed_offline(dataset: str) -> AsyncIterator[Any]:
    """A watch on the streamer's DataArrived of ``dataset``: ``await rows(n)`` waits until
    the partitions announced since the watch began hold ``n`` rows in all."""
    consumer = kafka.consumer(
        load(KafkaSettings),
        ARRIVED,
        group_id=f"e2e-landed-{uuid.uuid4().hex[:8]}",
        auto_offset_reset="latest",
    )
    seen: dict[str, DataArrived] = {}

    async def rows(count: int) -> None:
        async with asyncio.timeout(BOUND):
            while sum(a.row_count for a in seen.values()) < count:
                for records in (await consumer.getmany(timeout_ms=500)).values():
                    for record in records:
                        event = open_envelope(record.value)
                        payload = event.payload
                        if isinstance(payload, DataArrived) and payload.dataset == dataset:
                            seen[event.event_id] = payload

    await consumer.start()
    try:
        async with asyncio.timeout(BOUND):
            while not consumer.assignment():
                await consumer.getmany(timeout_ms=100)
        for partition in consumer.assignment():
            await consumer.position(partition)  # fixes "the end" before anything is produced
        yield rows
    finally:
        await consumer.stop()


async def run_for(scheduler: str, workflow: str, partition: str) -> spb.Run:
    """The run the arrival of ``partition`` started, once it has ended."""
    async with grpc.aio.insecure_channel(scheduler) as channel:
        stub = SchedulerServiceStub(channel)
        async with asyncio.timeout(BOUND):
            while True:
                page = await stub.ListRuns(
                    spb.ListRunsRequest(workflow_name=workflow), metadata=ADMIN
                )
                ids = [r.run_id for r in page.runs if r.cause.data_arrival.partition == partition]
                if ids:
                    reply = await stub.GetRun(spb.GetRunRequest(run_id=ids[0]), metadata=ADMIN)
                    if reply.run.state in TERMINAL:
                        run: spb.Run = reply.run
                        return run
                await asyncio.sleep(0.5)


def states(run: spb.Run) -> dict[str, str]:
    return {t.task_id: spb.TaskState.Name(t.state).removeprefix("TASK_STATE_") for t in run.tasks}

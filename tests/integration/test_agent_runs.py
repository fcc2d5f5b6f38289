"""A real ``python -m strata.agent`` running what a real ``python -m strata.provisioner`` assigns.

The test plays the scheduler by publishing ``TaskRequested`` to Kafka and reads
``strata.tasks.events`` as the scheduler would. The task functions live in a
temporary folder on the agent's code path (``STRATA_AGENT_CODE_PATH``). What
users rely on: the agent serves health before any provisioner answers and
registers once one does; a task runs in a worker process of its own with its
args and upstream outputs, and is reported started, then finished with its
outputs and measured usage; a task that raises is reported failed with its type,
message and traceback; a task that kills its worker takes down only that worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import sys
import textwrap
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import grpc
import pytest
from google.protobuf import json_format
from google.protobuf.message import Message
from google.protobuf.struct_pb2 import Struct
from grpc_health.v1 import health_pb2, health_pb2_grpc

from strata.api.common.v1.envelope_pb2 import Envelope
from strata.api.common.v1.refs_pb2 import BundleRef, TaskAttemptRef
from strata.api.common.v1.resources_pb2 import Resources
from strata.api.provisioner.v1 import provisioner_pb2 as pb
from strata.api.provisioner.v1.provisioner_pb2_grpc import ProvisionerServiceStub
from strata.api.scheduler.v1.scheduler_pb2 import TaskRequested
from strata.core.bus import Bus
from strata.core.settings import KafkaSettings, load
from strata.core.topics import TASKS_EVENTS

pytestmark = pytest.mark.integration

BOUND = 60.0
"""Bound on every wait: a guard against hanging, not a timing check."""
TOKENS = {
    "agent-token": {"principal": "agent-1", "roles": ["agent"]},
    "viewer-token": {"principal": "bob", "roles": ["viewer"]},
}
VIEWER = (("authorization", "Bearer viewer-token"),)
GIB = 1024**3
HUGE = 10**12
"""CPU millicores no other test's node has: only this test's agent can take its tasks."""
M = TypeVar("M", bound=Message)

TASKS = """
import os


def extract(rows):
    return {"rows": rows, "pid": os.getpid()}


def train(extract, scale):
    return {"total": extract["rows"] * scale, "pid": os.getpid()}


def broken():
    raise ValueError("column 'eta' missing")


def crash():
    os._exit(3)
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def _health(port: int) -> int | None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        try:
            reply = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=2.0
            )
        except grpc.aio.AioRpcError:
            return None
    status: int = reply.status
    return status


def _text(log: Path) -> str:
    return log.read_text()


async def _until_serving(port: int, process: asyncio.subprocess.Process, log: Path) -> None:
    async with asyncio.timeout(BOUND):
        while await _health(port) != health_pb2.HealthCheckResponse.SERVING:
            assert process.returncode is None, _text(log)
            await asyncio.sleep(0.2)


@contextlib.asynccontextmanager
async def _process(
    name: str, log: Path, port: int, env: dict[str, str]
) -> AsyncIterator[asyncio.subprocess.Process]:
    """``python -m strata.<name>`` serving health on ``port``; SIGTERM on the way out."""
    upper = name.upper()
    environment = {
        **os.environ,
        f"STRATA_SERVICE_{upper}_PORT": str(port),
        f"STRATA_SERVICE_{upper}_METRICS_PORT": str(_free_port()),
        "STRATA_AUTH_TOKENS": json.dumps(TOKENS),
        **env,
    }
    with log.open("ab") as sink:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", f"strata.{name}", env=environment, stderr=sink
        )
    try:
        await _until_serving(port, process, log)
        yield process
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), BOUND)
        except TimeoutError:
            process.kill()
            await process.wait()


@dataclass(frozen=True)
class Cluster:
    node_id: str
    agent_pid: int
    provisioner: str


def _agent_env(
    folder: Path, node_id: str, provisioner_port: int, cpu_millis: int = HUGE
) -> dict[str, str]:
    """Settings of an agent offering more CPU than any other test's node, code in ``folder``."""
    code = folder / "code"
    code.mkdir(exist_ok=True)
    (code / "agent_test_tasks.py").write_text(textwrap.dedent(TASKS))
    return {
        "STRATA_AGENT_PROVISIONER": f"127.0.0.1:{provisioner_port}",
        "STRATA_AGENT_NODE_ID": node_id,
        "STRATA_AGENT_CPU_MILLIS": str(cpu_millis),
        "STRATA_AGENT_MEMORY_BYTES": str(64 * GIB),
        "STRATA_AGENT_LABELS": json.dumps({"zone": "test"}),
        "STRATA_AGENT_CODE_PATH": json.dumps([str(folder / "code")]),
        "STRATA_AGENT_RECONNECT_MAX": "1",
        "STRATA_AUTH_CLIENT_TOKEN": "agent-token",
    }


@pytest.fixture(scope="module")
async def cluster(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Cluster]:
    """An agent started before its provisioner, then the provisioner it waits for."""
    folder = tmp_path_factory.mktemp("agent")
    node_id = f"agent-{uuid.uuid4().hex[:8]}"
    provisioner_port = _free_port()
    agent_env = _agent_env(folder, node_id, provisioner_port)
    async with (
        _process("agent", folder / "agent.log", _free_port(), agent_env) as agent,
        _process("provisioner", folder / "provisioner.log", provisioner_port, {}),
    ):
        address = f"127.0.0.1:{provisioner_port}"
        await _registered(address, node_id)
        yield Cluster(node_id, agent.pid, address)


async def _registered(address: str, node_id: str) -> None:
    async with grpc.aio.insecure_channel(address) as channel, asyncio.timeout(BOUND):
        stub = ProvisionerServiceStub(channel)
        while True:
            try:
                reply = await stub.GetNode(pb.GetNodeRequest(node_id=node_id), metadata=VIEWER)
            except grpc.aio.AioRpcError as exc:
                if exc.code() != grpc.StatusCode.NOT_FOUND:
                    raise
            else:
                if reply.node.state == pb.NODE_STATE_READY:
                    return
            await asyncio.sleep(0.1)


@pytest.fixture
async def events() -> AsyncIterator[tuple[Bus, asyncio.Queue[Message]]]:
    bus = Bus("agent-test", kafka=load(KafkaSettings))
    heard: asyncio.Queue[Message] = asyncio.Queue()
    consumer = bus.consumer(TASKS_EVENTS, group=f"agent-test-{uuid.uuid4().hex[:8]}")

    async def on_event(event: Message, envelope: Envelope) -> None:
        heard.put_nowait(event)

    for kind in (pb.TaskStarted, pb.TaskFinished, pb.TaskFailed):
        consumer.handle(kind, on_event)
    async with bus:
        yield bus, heard


def _request(
    function: str,
    args: dict[str, Any] | None = None,
    upstream: dict[str, dict[str, Any]] | None = None,
    cpu_millis: int = HUGE - 1,
) -> TaskRequested:
    arguments = Struct()
    arguments.update(args or {})
    outputs = {}
    for task_id, values in (upstream or {}).items():
        outputs[task_id] = Struct()
        outputs[task_id].update(values)
    return TaskRequested(
        attempt=TaskAttemptRef(run_id=str(uuid.uuid4()), task_id=function, attempt=1),
        workflow_name="agent-test",
        entrypoint=f"agent_test_tasks:{function}",
        bundle=BundleRef(uri="file:///unused", sha256="unused"),
        args=arguments,
        upstream_outputs=outputs,
        resources=Resources(cpu_millis=cpu_millis, memory_bytes=GIB),
        queue=f"q-{uuid.uuid4().hex[:8]}",
    )


async def _heard(heard: asyncio.Queue[Message], kind: type[M], attempt: TaskAttemptRef) -> M:
    async with asyncio.timeout(BOUND):
        while True:
            event = await heard.get()
            if isinstance(event, kind) and event.attempt == attempt:  # type: ignore[attr-defined]
                return event


async def _ended(heard: asyncio.Queue[Message], attempt: TaskAttemptRef) -> Message:
    async with asyncio.timeout(BOUND):
        while True:
            event = await heard.get()
            ended = isinstance(event, pb.TaskFinished | pb.TaskFailed)
            if ended and event.attempt == attempt:  # type: ignore[attr-defined]
                return event


def _outputs(finished: pb.TaskFinished) -> dict[str, Any]:
    outputs: dict[str, Any] = json_format.MessageToDict(finished.outputs)
    return outputs


async def test_chained_tasks_run_in_worker_processes_and_report_outputs_and_usage(
    cluster: Cluster, events: tuple[Bus, asyncio.Queue[Message]]
) -> None:
    bus, heard = events
    extract = _request("extract", {"rows": 3})
    await bus.publish(extract)
    started = await _heard(heard, pb.TaskStarted, extract.attempt)
    assert started.node_id == cluster.node_id
    finished = await _ended(heard, extract.attempt)
    assert isinstance(finished, pb.TaskFinished), finished
    outputs = _outputs(finished)
    assert outputs["rows"] == 3
    assert int(outputs["pid"]) not in (cluster.agent_pid, 0)
    assert finished.peak_usage.memory_bytes > 0
    assert finished.duration.ToNanoseconds() > 0

    train = _request("train", {"scale": 2}, {"extract": {"rows": outputs["rows"]}})
    await bus.publish(train)
    finished = await _ended(heard, train.attempt)
    assert isinstance(finished, pb.TaskFinished), finished
    assert _outputs(finished)["total"] == 6
    assert int(_outputs(finished)["pid"]) != cluster.agent_pid


async def test_a_task_that_raises_is_reported_failed_with_its_traceback(
    cluster: Cluster, events: tuple[Bus, asyncio.Queue[Message]]
) -> None:
    bus, heard = events
    broken = _request("broken")
    await bus.publish(broken)
    failed = await _ended(heard, broken.attempt)
    assert isinstance(failed, pb.TaskFailed), failed
    assert failed.node_id == cluster.node_id
    assert failed.kind == pb.FAILURE_KIND_ERROR
    assert failed.message == "ValueError: column 'eta' missing"
    assert "agent_test_tasks.py" in failed.traceback
    assert "raise ValueError(\"column 'eta' missing\")" in failed.traceback


async def test_a_task_that_kills_its_worker_takes_down_only_that_worker(
    cluster: Cluster, events: tuple[Bus, asyncio.Queue[Message]]
) -> None:
    bus, heard = events
    crash = _request("crash")
    await bus.publish(crash)
    failed = await _ended(heard, crash.attempt)
    assert isinstance(failed, pb.TaskFailed), failed
    assert failed.exit_code == 3
    assert "exited with code 3" in failed.message

    after = _request("extract", {"rows": 1})
    await bus.publish(after)
    finished = await _ended(heard, after.attempt)
    assert isinstance(finished, pb.TaskFinished), finished
    assert _outputs(finished)["rows"] == 1


async def test_a_nonsense_capacity_setting_refuses_to_start_naming_the_variable(
    tmp_path: Path,
) -> None:
    log = tmp_path / "agent.log"
    env = {**os.environ, "STRATA_AGENT_MEMORY_BYTES": "0"}
    with log.open("ab") as sink:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "strata.agent", env=env, stderr=sink
        )
    async with asyncio.timeout(BOUND):
        code = await process.wait()
    error = _text(log)
    assert code == 2
    assert "STRATA_AGENT_MEMORY_BYTES" in error
    assert len(error.strip().splitlines()) == 1


async def test_the_agent_reconnects_when_its_provisioner_restarts_and_runs_new_work(
    tmp_path: Path, events: tuple[Bus, asyncio.Queue[Message]]
) -> None:
    bus, heard = events
    node_id = f"agent-{uuid.uuid4().hex[:8]}"
    port = _free_port()
    log = tmp_path / "provisioner.log"
    # Larger than the module's agent, and asked for: only this agent can take the task.
    env = _agent_env(tmp_path, node_id, port, cpu_millis=3 * HUGE)
    async with _process("agent", tmp_path / "agent.log", _free_port(), env):
        async with _process("provisioner", log, port, {}):
            await _registered(f"127.0.0.1:{port}", node_id)
        async with _process("provisioner", log, port, {}):
            after = _request("extract", {"rows": 7}, cpu_millis=2 * HUGE)
            await bus.publish(after)
            finished = await _ended(heard, after.attempt)
    assert isinstance(finished, pb.TaskFinished), finished
    assert finished.node_id == node_id
    assert _outputs(finished)["rows"] == 7

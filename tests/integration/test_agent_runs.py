"""A real ``python -m strata.agent`` running what a real ``python -m strata.provisioner`` assigns.

The test plays the scheduler by publishing ``TaskRequested`` to Kafka and reads
``strata.tasks.events`` as the scheduler would. The task functions are a code
bundle packed by the SDK and stored in the test stack's S3, as ``strata workflow
apply`` stores a project; the agents have no other code. What users rely on: the
agent serves health before any provisioner answers and registers once one does; a
task runs from its bundle in a worker process of its own with its args and
upstream outputs, and is reported started, then finished with its outputs and
measured usage, in a worker started ahead and used for that attempt only (a spare
that died while waiting is passed over); a task that raises is reported failed
with its type, message and traceback; a task that kills its worker takes down only
that worker. A bundle is fetched once per agent; one whose archive does not match
its sha256 fails the attempt naming both hashes and nothing runs; an entrypoint
the bundle lacks fails the attempt naming it. A SIGKILLed agent's node is lost
with its attempt (NodeLost, TaskLost), its worker goes with it, and the attempt
requested again runs on another agent; a SIGTERMed agent lets its running attempt
finish within its grace and reports it, and one it cannot finish in time is not
reported cancelled but left to node loss, to run again elsewhere; an agent back
from a pause has its lost attempt cancelled and its late report ignored and
counted; a cancelled attempt's worker gets SIGTERM and the attempt is reported
cancelled (a queued one leaves the queue); a task past its memory limit or its
timeout is stopped and reported so; a running attempt reports its usage; what a
task prints is in the blob store and shown by ``strata workflow logs``, live with
``--follow``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import socket
import sys
import tempfile
import textwrap
import urllib.request
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import grpc
import psutil
import pytest
from google.protobuf import json_format
from google.protobuf.message import Message
from google.protobuf.struct_pb2 import Struct
from grpc_health.v1 import health_pb2, health_pb2_grpc

from strata.api.common.v1.envelope_pb2 import Envelope
from strata.api.common.v1.refs_pb2 import TaskAttemptRef
from strata.api.common.v1.resources_pb2 import Resources
from strata.api.provisioner.v1 import provisioner_pb2 as pb
from strata.api.provisioner.v1.provisioner_pb2_grpc import ProvisionerServiceStub
from strata.api.scheduler.v1.scheduler_pb2 import TaskCancelRequested, TaskRequested
from strata.core.blobs import open_blob_store
from strata.core.bundles import bundle_key
from strata.core.bus import Bus
from strata.core.settings import BlobSettings, KafkaSettings, load
from strata.core.topics import NODES_EVENTS, TASKS_EVENTS
from strata.sdk.workflows.bundle import Bundle, pack, reference, store

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
import pathlib
import signal
import sys
import time


def extract(rows):
    return {"rows": rows, "pid": os.getpid()}


def train(extract, scale):
    return {"total": extract["rows"] * scale, "pid": os.getpid()}


def broken():
    raise ValueError("column 'eta' missing")


def crash():
    os._exit(3)


def hog(step_mib, most_mib):
    step_mib, most_mib = int(step_mib), int(most_mib)
    held = []
    while len(held) * step_mib < most_mib:
        held.append(b"x" * (step_mib * 1024 * 1024))
        time.sleep(0.05)
    return {"held_mib": len(held) * step_mib}


def nap(seconds):
    time.sleep(seconds)
    return {"slept": seconds}


def chatty(lines, marker=None):
    for number in range(int(lines)):
        print(f"line {number} to stdout")
    print("a word to stderr", file=sys.stderr)
    while marker is not None and not pathlib.Path(marker).exists():
        time.sleep(0.05)
    print("released")
    return {}


def hold(marker):
    # Note the agent's pid and the worker's beside the marker, then wait until it exists;
    # on SIGTERM, note that too and exit.
    path = pathlib.Path(marker)

    def terminated(signum, frame):
        path.with_suffix(".term").touch()
        sys.exit(143)

    signal.signal(signal.SIGTERM, terminated)
    path.with_suffix(".pids").write_text(f"{os.getppid()} {os.getpid()}")
    deadline = time.monotonic() + 300
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    return {"released": path.exists()}
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
    name: str, log: Path, port: int, env: dict[str, str], metrics_port: int | None = None
) -> AsyncIterator[asyncio.subprocess.Process]:
    """``python -m strata.<name>`` serving health on ``port``; SIGTERM on the way out, unless
    the test killed it already."""
    upper = name.upper()
    environment = {
        **os.environ,
        f"STRATA_SERVICE_{upper}_PORT": str(port),
        f"STRATA_SERVICE_{upper}_METRICS_PORT": str(metrics_port or _free_port()),
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
        if process.returncode is None:
            await _stop(process)


async def _stop(process: asyncio.subprocess.Process) -> None:
    """SIGTERM (after SIGCONT, should the test have paused it), SIGKILL if it overstays."""
    process.send_signal(signal.SIGCONT)
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
    bundles: Path
    """The agent's folder of extracted bundles."""


def _packed_tasks() -> Bundle:
    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / "agent_test_tasks.py").write_text(textwrap.dedent(TASKS))
        return pack(Path(folder))


TASKS_BUNDLE = _packed_tasks()
S3 = BlobSettings(backend="s3")


@pytest.fixture(scope="module", autouse=True)
async def tasks_bundle() -> None:
    """The tasks' bundle in the test stack's S3, where every agent here fetches it from."""
    async with open_blob_store(S3) as blobs:
        await store(TASKS_BUNDLE, blobs, S3)


def _agent_env(
    folder: Path, node_id: str, provisioner_port: int, cpu_millis: int = HUGE
) -> dict[str, str]:
    """Settings of an agent offering more CPU than any other test's node, its bundles
    kept in a state folder of its own."""
    return {
        "STRATA_AGENT_PROVISIONER": f"127.0.0.1:{provisioner_port}",
        "STRATA_AGENT_NODE_ID": node_id,
        "STRATA_AGENT_CPU_MILLIS": str(cpu_millis),
        "STRATA_AGENT_MEMORY_BYTES": str(64 * GIB),
        "STRATA_AGENT_LABELS": json.dumps({"zone": "test"}),
        "STRATA_AGENT_STATE_DIR": str(folder / f"state-{node_id}"),
        "STRATA_AGENT_RECONNECT_MAX": "1",
        "STRATA_BLOB_BACKEND": "s3",
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
        bundles = Path(agent_env["STRATA_AGENT_STATE_DIR"]) / "bundles"
        yield Cluster(node_id, agent.pid, address, bundles)


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

    for kind in (pb.TaskStarted, pb.TaskFinished, pb.TaskFailed, pb.TaskLost, pb.TaskUsage):
        consumer.handle(kind, on_event)
    nodes = bus.consumer(NODES_EVENTS, group=f"agent-test-{uuid.uuid4().hex[:8]}")
    nodes.handle(pb.NodeLost, on_event)
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
        # A workflow of its own: the provisioner sizes attempts from the past usage of the
        # same (workflow, task), and the stack (with that history) outlives the session.
        workflow_name=f"agent-test-{uuid.uuid4().hex[:8]}",
        entrypoint=f"agent_test_tasks:{function}",
        bundle=reference(TASKS_BUNDLE, S3),
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


async def _spares(agent_pid: int) -> set[int]:
    """The agent's worker processes once at least one is there (a spare, waiting)."""
    async with asyncio.timeout(BOUND):
        while True:
            children = {c.pid for c in psutil.Process(agent_pid).children()}
            if children:
                return children
            await asyncio.sleep(0.05)


async def test_an_attempt_runs_in_a_worker_started_before_it_and_a_worker_runs_one_attempt(
    cluster: Cluster, events: tuple[Bus, asyncio.Queue[Message]]
) -> None:
    bus, heard = events
    before = await _spares(cluster.agent_pid)
    extract = _request("extract", {"rows": 1})
    await bus.publish(extract)
    finished = await _ended(heard, extract.attempt)
    assert isinstance(finished, pb.TaskFinished), finished
    first = int(_outputs(finished)["pid"])
    assert first in before, "the attempt ran in a worker the agent had started ahead"

    await _spares(cluster.agent_pid)
    again = _request("extract", {"rows": 2})
    await bus.publish(again)
    finished = await _ended(heard, again.attempt)
    assert isinstance(finished, pb.TaskFinished), finished
    assert int(_outputs(finished)["pid"]) != first, "a worker is never handed a second attempt"


async def test_a_spare_worker_killed_while_waiting_is_never_handed_an_attempt(
    cluster: Cluster, events: tuple[Bus, asyncio.Queue[Message]]
) -> None:
    bus, heard = events
    killed = await _spares(cluster.agent_pid)
    for pid in killed:
        os.kill(pid, signal.SIGKILL)
    await _gone_all(killed)
    extract = _request("extract", {"rows": 4})
    await bus.publish(extract)
    finished = await _ended(heard, extract.attempt)
    assert isinstance(finished, pb.TaskFinished), finished
    assert int(_outputs(finished)["pid"]) not in killed


async def _gone_all(pids: set[int]) -> None:
    """Until none of ``pids`` runs (a zombie the agent has not reaped counts as gone)."""
    async with asyncio.timeout(BOUND):
        while True:
            alive = []
            for pid in pids:
                with contextlib.suppress(psutil.NoSuchProcess):
                    if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                        alive.append(pid)
            if not alive:
                return
            await asyncio.sleep(0.05)


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


async def _pids(marker: Path) -> tuple[int, int]:
    """The agent's pid and the worker's, as the ``hold`` task noted them."""
    pids = marker.with_suffix(".pids")
    async with asyncio.timeout(BOUND):
        while True:
            noted = pids.read_text().split() if pids.exists() else []
            if len(noted) == 2:
                return int(noted[0]), int(noted[1])
            await asyncio.sleep(0.05)


async def _gone(pid: int) -> None:
    async with asyncio.timeout(BOUND):
        while True:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            await asyncio.sleep(0.05)


def _hold(marker: Path, run_id: str, attempt: int, cpu_millis: int) -> TaskRequested:
    request = _request("hold", {"marker": str(marker)}, cpu_millis=cpu_millis)
    request.attempt.run_id = run_id
    request.attempt.attempt = attempt
    return request


async def test_a_killed_agent_is_lost_with_its_attempt_which_runs_again_on_another_agent(
    tmp_path: Path, events: tuple[Bus, asyncio.Queue[Message]]
) -> None:
    bus, heard = events
    port = _free_port()
    address = f"127.0.0.1:{port}"
    # Larger than every other test's agent, and asked for: only these agents take the task.
    first, second = f"agent-{uuid.uuid4().hex[:8]}", f"agent-{uuid.uuid4().hex[:8]}"
    marker = tmp_path / "release"
    request = _hold(marker, str(uuid.uuid4()), attempt=1, cpu_millis=4 * HUGE)
    async with _process("provisioner", tmp_path / "provisioner.log", port, {}):
        env = _agent_env(tmp_path, first, port, cpu_millis=5 * HUGE)
        async with _process("agent", tmp_path / "first.log", _free_port(), env) as agent:
            await _registered(address, first)
            await bus.publish(request)
            await _heard(heard, pb.TaskStarted, request.attempt)
            agent_pid, worker_pid = await _pids(marker)
            assert agent_pid == agent.pid
            agent.kill()
            await agent.wait()
        try:
            await _gone(worker_pid)  # a worker does not outlive its agent
            lost, node_lost = await _lost(heard, first, request.attempt)
        finally:
            marker.touch()
        assert lost.node_id == first
        assert "lease expired" in lost.reason
        assert list(node_lost.lost_attempts) == [request.attempt]

        again = _hold(marker, request.attempt.run_id, attempt=2, cpu_millis=4 * HUGE)
        env = _agent_env(tmp_path, second, port, cpu_millis=5 * HUGE)
        async with _process("agent", tmp_path / "second.log", _free_port(), env):
            await _registered(address, second)
            await bus.publish(again)
            finished = await _ended(heard, again.attempt)
    assert isinstance(finished, pb.TaskFinished), finished
    assert finished.node_id == second


async def _stored_project(files: dict[str, str]) -> Bundle:
    """A project of ``files`` (unique: a module names a fresh id), packed and stored in S3."""
    with tempfile.TemporaryDirectory() as folder:
        for name, text in {**files, "project_id.py": f"ID = {uuid.uuid4().hex!r}\n"}.items():
            (Path(folder) / name).write_text(textwrap.dedent(text))
        packed = pack(Path(folder))
    async with open_blob_store(S3) as blobs:
        await store(packed, blobs, S3)
    return packed


def _from(bundle: Bundle, entrypoint: str, args: dict[str, Any] | None = None) -> TaskRequested:
    request = _request("project", args)
    request.entrypoint = entrypoint
    request.bundle.CopyFrom(reference(bundle, S3))
    return request


async def test_a_bundle_is_fetched_once_per_agent_and_its_siblings_are_importable(
    cluster: Cluster, events: tuple[Bus, asyncio.Queue[Message]]
) -> None:
    bus, heard = events
    project = await _stored_project(
        {
            "workflow.py": "import helpers\n\ndef answer():\n    return {'answer': helpers.VALUE}",
            "helpers.py": "VALUE = 42\n",
        }
    )
    first = _from(project, "workflow:answer")
    await bus.publish(first)
    finished = await _ended(heard, first.attempt)
    assert isinstance(finished, pb.TaskFinished), finished
    assert _outputs(finished) == {"answer": 42}
    assert (cluster.bundles / project.sha256 / "helpers.py").read_text() == "VALUE = 42\n"

    # The object in the store is no longer the bundle: only the agent's copy can serve.
    async with open_blob_store(S3) as blobs:
        await blobs.put(bundle_key(project.sha256), b"not a bundle any more")
    second = _from(project, "workflow:answer")
    await bus.publish(second)
    finished = await _ended(heard, second.attempt)
    assert isinstance(finished, pb.TaskFinished), finished
    assert _outputs(finished) == {"answer": 42}


async def test_a_bundle_not_matching_its_sha256_fails_naming_both_hashes_and_nothing_runs(
    cluster: Cluster, events: tuple[Bus, asyncio.Queue[Message]], tmp_path: Path
) -> None:
    bus, heard = events
    touch = "import pathlib\n\ndef touch(marker):\n    pathlib.Path(marker).touch()\n"
    applied = await _stored_project({"workflow.py": touch})
    other = await _stored_project({"workflow.py": touch + "# changed behind the scheduler\n"})
    async with open_blob_store(S3) as blobs:  # same key, other bytes: a tampered object
        await blobs.put(bundle_key(applied.sha256), other.archive)
    marker = tmp_path / "ran"

    request = _from(applied, "workflow:touch", {"marker": str(marker)})
    await bus.publish(request)
    failed = await _ended(heard, request.attempt)

    assert isinstance(failed, pb.TaskFailed), failed
    assert failed.kind == pb.FAILURE_KIND_BUNDLE_UNAVAILABLE
    assert applied.sha256 in failed.message
    assert other.sha256 in failed.message
    assert not marker.exists()
    assert not (cluster.bundles / applied.sha256).exists()


@pytest.mark.parametrize(
    "entrypoint", ["agent_test_tasks:nowhere", "no_such_module:run", "agent_test_tasks.sub:run"]
)
async def test_an_entrypoint_missing_from_the_bundle_fails_naming_it(
    cluster: Cluster, events: tuple[Bus, asyncio.Queue[Message]], entrypoint: str
) -> None:
    bus, heard = events
    request = _request("missing")
    request.entrypoint = entrypoint
    await bus.publish(request)
    failed = await _ended(heard, request.attempt)
    assert isinstance(failed, pb.TaskFailed), failed
    assert failed.kind == pb.FAILURE_KIND_ERROR
    assert entrypoint in failed.message
    assert "not found" in failed.message


async def _logged(log: Path, text: str) -> None:
    """Until ``text`` is in the process's ``log``."""
    async with asyncio.timeout(BOUND):
        while True:
            if text in _text(log):
                return
            await asyncio.sleep(0.05)


async def test_a_sigtermed_agent_lets_its_running_attempt_finish_and_reports_it(
    tmp_path: Path, events: tuple[Bus, asyncio.Queue[Message]]
) -> None:
    bus, heard = events
    port = _free_port()
    node_id = f"agent-{uuid.uuid4().hex[:8]}"
    marker = tmp_path / "release"
    request = _hold(marker, str(uuid.uuid4()), attempt=1, cpu_millis=8 * HUGE)
    log = tmp_path / "agent.log"
    async with _process("provisioner", tmp_path / "provisioner.log", port, {}):
        env = {
            **_agent_env(tmp_path, node_id, port, cpu_millis=9 * HUGE),
            "STRATA_SERVICE_SHUTDOWN_GRACE": str(BOUND),
        }
        async with _process("agent", log, _free_port(), env) as agent:
            await _registered(f"127.0.0.1:{port}", node_id)
            await bus.publish(request)
            await _heard(heard, pb.TaskStarted, request.attempt)
            agent.send_signal(signal.SIGTERM)
            await _logged(log, "the agent is leaving")
            marker.touch()  # the task ends while its agent is leaving
            finished = await _ended(heard, request.attempt)
            await asyncio.wait_for(agent.wait(), BOUND)
    assert isinstance(finished, pb.TaskFinished), finished
    assert finished.node_id == node_id
    assert _outputs(finished)["released"] is True


async def test_a_sigtermed_agent_leaves_what_it_cannot_finish_to_node_loss_not_cancelled(
    tmp_path: Path, events: tuple[Bus, asyncio.Queue[Message]]
) -> None:
    bus, heard = events
    port = _free_port()
    address = f"127.0.0.1:{port}"
    first, second = f"agent-{uuid.uuid4().hex[:8]}", f"agent-{uuid.uuid4().hex[:8]}"
    marker = tmp_path / "release"
    request = _hold(marker, str(uuid.uuid4()), attempt=1, cpu_millis=10 * HUGE)
    async with _process("provisioner", tmp_path / "provisioner.log", port, {}):
        env = {
            **_agent_env(tmp_path, first, port, cpu_millis=11 * HUGE),
            "STRATA_SERVICE_SHUTDOWN_GRACE": "1",  # no time to finish: it must leave it
        }
        async with _process("agent", tmp_path / "first.log", _free_port(), env) as agent:
            await _registered(address, first)
            await bus.publish(request)
            await _heard(heard, pb.TaskStarted, request.attempt)
            _, worker_pid = await _pids(marker)
            agent.send_signal(signal.SIGTERM)
            await asyncio.wait_for(agent.wait(), BOUND)
        await _gone(worker_pid)
        # The attempt's next word is its loss, when the lease expires: not an end reported.
        async with asyncio.timeout(BOUND):
            while True:
                lost = await heard.get()
                ends = pb.TaskLost | pb.TaskFailed | pb.TaskFinished
                if isinstance(lost, ends) and lost.attempt == request.attempt:
                    break
        assert isinstance(lost, pb.TaskLost), lost
        assert lost.node_id == first

        again = _hold(marker, request.attempt.run_id, attempt=2, cpu_millis=10 * HUGE)
        env = _agent_env(tmp_path, second, port, cpu_millis=11 * HUGE)
        async with _process("agent", tmp_path / "second.log", _free_port(), env):
            await _registered(address, second)
            await bus.publish(again)
            await _heard(heard, pb.TaskStarted, again.attempt)
            marker.touch()
            finished = await _ended(heard, again.attempt)
    assert isinstance(finished, pb.TaskFinished), finished
    assert finished.node_id == second


async def test_an_agent_back_from_a_pause_has_its_lost_attempt_cancelled_and_its_report_ignored(
    tmp_path: Path, events: tuple[Bus, asyncio.Queue[Message]]
) -> None:
    bus, heard = events
    port, metrics_port = _free_port(), _free_port()
    node_id = f"agent-{uuid.uuid4().hex[:8]}"
    marker = tmp_path / "release"
    request = _hold(marker, str(uuid.uuid4()), attempt=1, cpu_millis=6 * HUGE)
    metrics = f"http://127.0.0.1:{metrics_port}/metrics"
    stale = "strata_provisioner_stale_reports_total"
    log = tmp_path / "provisioner.log"
    async with _process("provisioner", log, port, {}, metrics_port=metrics_port):
        env = _agent_env(tmp_path, node_id, port, cpu_millis=7 * HUGE)
        async with _process("agent", tmp_path / "agent.log", _free_port(), env) as agent:
            await _registered(f"127.0.0.1:{port}", node_id)
            await bus.publish(request)
            await _heard(heard, pb.TaskStarted, request.attempt)
            _, worker_pid = await _pids(marker)
            before = _sample(metrics, stale, report="task_failed")
            agent.send_signal(signal.SIGSTOP)
            try:
                lost = await _heard(heard, pb.TaskLost, request.attempt)
            finally:
                agent.send_signal(signal.SIGCONT)
            assert lost.node_id == node_id
            # Back, the agent is told to stop the attempt the provisioner gave up on; its
            # report of the cancelled attempt is fenced out, and counted.
            await _gone(worker_pid)
            await _counted(metrics, stale, before, report="task_failed")
    assert not marker.exists()


async def _lost(
    heard: asyncio.Queue[Message], node_id: str, attempt: TaskAttemptRef
) -> tuple[pb.TaskLost, pb.NodeLost]:
    """The TaskLost of ``attempt`` and the NodeLost of ``node_id``, in whichever order
    their topics deliver them."""
    task_lost: pb.TaskLost | None = None
    node_lost: pb.NodeLost | None = None
    async with asyncio.timeout(BOUND):
        while task_lost is None or node_lost is None:
            event = await heard.get()
            if isinstance(event, pb.TaskLost) and event.attempt == attempt:
                task_lost = event
            elif isinstance(event, pb.NodeLost) and event.node_id == node_id:
                node_lost = event
    return task_lost, node_lost


async def _counted(url: str, name: str, before: float, **labels: str) -> None:
    """Wait until the counter ``name`` of the service at ``url`` is past ``before``."""
    async with asyncio.timeout(BOUND):
        while True:
            if _sample(url, name, **labels) > before:
                return
            await asyncio.sleep(0.1)


def _sample(url: str, name: str, **labels: str) -> float:
    """One sample of a service's ``/metrics``; 0 when it is not there yet."""
    with urllib.request.urlopen(url, timeout=5) as reply:
        text = reply.read().decode()
    for line in text.splitlines():
        match = re.fullmatch(r"(\w+)(?:\{(.*)\})? (\S+)", line)
        if match is None or match[1] != name:
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', match[2] or ""))
        if all(found.get(k) == v for k, v in labels.items()):
            return float(match[3])
    return 0.0


async def test_cancelling_a_running_attempt_terminates_its_worker_and_reports_it_cancelled(
    cluster: Cluster, events: tuple[Bus, asyncio.Queue[Message]], tmp_path: Path
) -> None:
    bus, heard = events
    marker = tmp_path / "release"
    request = _hold(marker, str(uuid.uuid4()), attempt=1, cpu_millis=HUGE - 1)
    await bus.publish(request)
    await _heard(heard, pb.TaskStarted, request.attempt)
    _, worker_pid = await _pids(marker)

    reason = "run cancelled by bob"
    await bus.publish(TaskCancelRequested(attempt=request.attempt, reason=reason))
    failed = await _ended(heard, request.attempt)
    assert isinstance(failed, pb.TaskFailed), failed
    assert failed.kind == pb.FAILURE_KIND_CANCELLED
    assert failed.message == reason
    assert failed.node_id == cluster.node_id
    await _gone(worker_pid)
    assert marker.with_suffix(".term").exists(), "the worker got SIGTERM before any SIGKILL"
    assert not marker.exists()


async def test_cancelling_a_queued_attempt_takes_it_out_of_the_queue_and_reports_it_cancelled(
    cluster: Cluster, events: tuple[Bus, asyncio.Queue[Message]]
) -> None:
    bus, heard = events
    request = _request("extract", {"rows": 1}, cpu_millis=HUGE * 1000)
    await bus.publish(request)
    async with grpc.aio.insecure_channel(cluster.provisioner) as channel:
        stub = ProvisionerServiceStub(channel)
        queue = pb.GetQueueRequest(name=request.queue)
        async with asyncio.timeout(BOUND):
            while True:
                if (await stub.GetQueue(queue, metadata=VIEWER)).queue.pending:
                    break
                await asyncio.sleep(0.1)

        await bus.publish(TaskCancelRequested(attempt=request.attempt, reason="not needed"))
        failed = await _ended(heard, request.attempt)
        assert isinstance(failed, pb.TaskFailed), failed
        assert failed.kind == pb.FAILURE_KIND_CANCELLED
        assert failed.message == "not needed"
        assert failed.node_id == ""
        assert not (await stub.GetQueue(queue, metadata=VIEWER)).queue.pending


async def test_a_task_over_its_memory_limit_is_stopped_and_reported_out_of_memory(
    cluster: Cluster, events: tuple[Bus, asyncio.Queue[Message]]
) -> None:
    bus, heard = events
    limit = 256 * 1024**2
    request = _request("hog", {"step_mib": 16, "most_mib": 1024})
    request.resources.memory_bytes = limit
    await bus.publish(request)
    failed = await _ended(heard, request.attempt)
    assert isinstance(failed, pb.TaskFailed), failed
    assert failed.kind == pb.FAILURE_KIND_OUT_OF_MEMORY
    assert failed.node_id == cluster.node_id
    assert "out of memory" in failed.message
    assert failed.peak_usage.memory_bytes > limit


async def test_a_task_past_its_timeout_is_stopped_and_reported_timed_out(
    cluster: Cluster, events: tuple[Bus, asyncio.Queue[Message]]
) -> None:
    bus, heard = events
    request = _request("nap", {"seconds": 2 * BOUND})
    request.timeout.FromSeconds(1)
    await bus.publish(request)
    failed = await _ended(heard, request.attempt)
    assert isinstance(failed, pb.TaskFailed), failed
    assert failed.kind == pb.FAILURE_KIND_TIMEOUT
    assert "past its timeout of 1s" in failed.message


STRATA = Path(sys.executable).with_name("strata")
"""The ``strata`` CLI of the venv that runs the tests."""


async def _logs(*args: str) -> tuple[int, str, str]:
    """``strata workflow logs ARGS`` reading the stack's S3 server, as a user would."""
    process = await asyncio.create_subprocess_exec(
        STRATA,
        "workflow",
        "logs",
        *args,
        env={**os.environ, "STRATA_BLOB_BACKEND": "s3"},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(BOUND):
        out, err = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_what_a_task_prints_is_kept_in_the_blob_store_and_shown_by_workflow_logs(
    cluster: Cluster, events: tuple[Bus, asyncio.Queue[Message]]
) -> None:
    bus, heard = events
    chatty = _request("chatty", {"lines": 3})
    broken = _request("broken")
    broken.attempt.run_id = chatty.attempt.run_id
    await bus.publish(chatty)
    await bus.publish(broken)
    assert isinstance(await _ended(heard, chatty.attempt), pb.TaskFinished)
    assert isinstance(await _ended(heard, broken.attempt), pb.TaskFailed)

    code, out, err = await _logs(chatty.attempt.run_id)
    assert code == 0, err
    lines = "".join(f"line {n} to stdout\n" for n in range(3))
    stdout = f"==> chatty attempt 1 stdout <==\n{lines}"
    assert stdout in out
    assert "==> chatty attempt 1 stderr <==\na word to stderr\n" in out
    assert out.index("==> broken attempt 1 stderr <==") < out.index(stdout)
    assert "raise ValueError(\"column 'eta' missing\")" in out

    code, out, _ = await _logs(chatty.attempt.run_id, "chatty")
    assert code == 0
    assert "line 2 to stdout" in out
    assert "broken" not in out

    code, out, err = await _logs(str(uuid.uuid4()))
    assert code == 1
    assert "no output of run" in err


async def _printed(stream: asyncio.StreamReader, line: str) -> None:
    """Read ``stream`` up to ``line``; fail if it ends first."""
    while True:
        read = await stream.readline()
        assert read, f"the command ended before printing {line!r}"
        if read.decode().strip() == line:
            return


async def test_workflow_logs_follow_shows_output_while_the_task_runs(
    cluster: Cluster, events: tuple[Bus, asyncio.Queue[Message]], tmp_path: Path
) -> None:
    bus, heard = events
    marker = tmp_path / "release"
    request = _request("chatty", {"lines": 1, "marker": str(marker)})
    await bus.publish(request)
    await _heard(heard, pb.TaskStarted, request.attempt)
    follow = await asyncio.create_subprocess_exec(
        STRATA,
        "workflow",
        "logs",
        request.attempt.run_id,
        "--follow",
        env={**os.environ, "STRATA_BLOB_BACKEND": "s3"},
        stdout=asyncio.subprocess.PIPE,
    )
    assert follow.stdout is not None
    try:
        async with asyncio.timeout(BOUND):
            await _printed(follow.stdout, "line 0 to stdout")
            assert not marker.exists(), "shown while the task still runs"
            marker.touch()
            await _printed(follow.stdout, "released")
    finally:
        marker.touch()
        follow.terminate()
        await follow.wait()
    assert isinstance(await _ended(heard, request.attempt), pb.TaskFinished)


async def test_a_running_attempt_reports_its_usage_every_interval(
    cluster: Cluster, events: tuple[Bus, asyncio.Queue[Message]], tmp_path: Path
) -> None:
    bus, heard = events
    marker = tmp_path / "release"
    request = _hold(marker, str(uuid.uuid4()), attempt=1, cpu_millis=HUGE - 1)
    await bus.publish(request)
    try:
        usage = await _heard(heard, pb.TaskUsage, request.attempt)
    finally:
        marker.touch()
    assert usage.node_id == cluster.node_id
    assert usage.usage.memory_bytes > 0
    assert isinstance(await _ended(heard, request.attempt), pb.TaskFinished)

"""The agent's side of the provisioner's ``Connect`` stream, kept up for as long as the agent runs.

One session: register (capacity, labels, what still runs), read ``AgentAccepted``,
then heartbeat at the interval it names, write queued reports, and start or stop
attempts as assignments and cancellations arrive. When the stream drops (the
provisioner restarts, the network blips) attempts keep running and their reports
wait; the agent connects again after an exponential, jittered backoff. On SIGTERM
the agent leaves (:func:`serve_provisioner`): it says so first (``AgentLeaving``),
so the provisioner places nothing more on the node, then running attempts may
finish within the shutdown grace, the rest is left to node loss, never reported
cancelled.

A drained node (``DrainRequest``: an operator's ``DrainNode``, the fleet scaling it
down) gets no new assignment; the agent has nothing to stop asking for, since the
provisioner pushes work. It keeps its attempts and its session, and when asked to
shut down once empty it waits for its last attempt to end and is reported, then
leaves exactly as on SIGTERM (it signals itself: one way out, the runtime's
graceful stop, exit code 0), so a supervisor that restarts failed agents sees a
clean exit.
"""

from __future__ import annotations

import asyncio
import functools
import signal
import socket
from collections.abc import Awaitable, Callable

import grpc
import structlog

from strata.agent.attempts import Attempts, Outgoing
from strata.agent.bundles import Bundles
from strata.agent.domain.backoff import reconnect_delay
from strata.agent.settings import AgentSettings
from strata.api.common.v1.resources_pb2 import Resources
from strata.api.provisioner.v1 import provisioner_pb2 as pb
from strata.api.provisioner.v1.provisioner_pb2_grpc import ProvisionerServiceStub
from strata.core.rpc.client import channel
from strata.core.rpc.tls import channel_credentials
from strata.core.runtime import ServiceContext

log = structlog.stdlib.get_logger(__name__)

VERSION = "0.1.0"
LEAVING = "the agent is stopping"
"""Why the agent leaves, as it tells the provisioner."""
REPORT_MARGIN = 1.0
"""Seconds kept, out of the shutdown grace, to hand the last reports over before leaving."""


def provisioner_session(settings: AgentSettings) -> Callable[[ServiceContext], Awaitable[None]]:
    """The agent's main loop, for :class:`~strata.core.runtime.Loop`, with its settings bound."""
    return functools.partial(serve_provisioner, settings=settings)


async def serve_provisioner(context: ServiceContext, *, settings: AgentSettings) -> None:
    """Stay connected to the provisioner and run what it assigns, until cancelled.

    Cancelled (the agent got SIGTERM), the agent leaves: the session stays up while
    the running attempts get the shutdown grace but :data:`REPORT_MARGIN` to end and
    be reported (:meth:`Attempts.leave`); then the agent writes what is queued, ends
    its side of the stream and waits, for up to that margin, for the provisioner to
    end its side (so it has taken every report, not dropped one in hand when the
    stream broke). What was still running is left to node loss.
    """
    outgoing = Outgoing()
    bundles = Bundles(settings.state_dir / "bundles", context.blobs, context.settings.blobs)
    attempts = Attempts(
        settings.node_id,
        outgoing,
        context.blobs,
        bundles,
        settings.spare_workers,
        memory_bytes=settings.memory_bytes,
    )
    connected = asyncio.create_task(_stay_connected(context, settings, attempts, outgoing))
    try:
        await asyncio.shield(connected)
    finally:
        outgoing.put(pb.ConnectRequest(leaving=pb.AgentLeaving(reason=LEAVING)))
        grace = context.settings.service.shutdown_grace
        await attempts.leave(within=max(grace - REPORT_MARGIN, 0.0))
        outgoing.close()
        await asyncio.wait({connected}, timeout=REPORT_MARGIN)
        connected.cancel()
        await asyncio.gather(connected, return_exceptions=True)


async def _stay_connected(
    context: ServiceContext, settings: AgentSettings, attempts: Attempts, outgoing: Outgoing
) -> None:
    """One session after another, reconnecting with backoff, until cancelled or, the
    agent leaving, the last session ended with every report written."""
    runtime = context.settings
    credentials = channel_credentials(runtime.tls)
    failures = 0
    while not outgoing.closed:
        async with channel(
            settings.provisioner, runtime.auth, mode=runtime.mode.mode, credentials=credentials
        ) as provisioner:
            session = Session(ProvisionerServiceStub(provisioner), settings, attempts, outgoing)
            try:
                await session.run()
            except grpc.aio.AioRpcError as exc:
                log.warning(
                    f"the provisioner at {settings.provisioner} dropped the stream: "
                    f"{exc.code().name} {exc.details()}",
                    node_id=settings.node_id,
                )
            except Exception:
                # Whatever broke this session, the attempts must outlive it.
                log.exception("the session with the provisioner failed; reconnecting")
        if outgoing.closed:
            return
        failures = 1 if session.accepted else failures + 1
        await asyncio.sleep(
            reconnect_delay(failures, settings.reconnect_initial, settings.reconnect_max)
        )


class Session:
    """One ``Connect`` stream: registration, heartbeats, reports out, assignments in."""

    def __init__(
        self,
        stub: ProvisionerServiceStub,
        settings: AgentSettings,
        attempts: Attempts,
        outgoing: Outgoing,
    ) -> None:
        self._stub = stub
        self._settings = settings
        self._attempts = attempts
        self._outgoing = outgoing
        self._helpers: list[asyncio.Task[None]] = []
        """The session's tasks beside its reading, cancelled when it ends."""
        self._exiting = False
        self.accepted = False

    async def run(self) -> None:
        """Until the stream ends; raises the provisioner's refusal or the transport's error."""
        call = self._stub.Connect()
        try:
            await call.write(self._registration())
            first: pb.ConnectResponse = await call.read()
            if first is grpc.aio.EOF or not first.HasField("accepted"):
                log.warning("the provisioner did not accept the registration; reconnecting")
                return
            self.accepted = True
            accepted = first.accepted
            log.info(
                "registered with the provisioner",
                node_id=self._settings.node_id,
                session_id=accepted.session_id,
            )
            interval = accepted.heartbeat_interval.ToTimedelta().total_seconds() or 5.0
            usage_every = accepted.usage_interval.ToTimedelta().total_seconds()
            self._attempts.usage_interval = usage_every or self._attempts.usage_interval
            self._helpers = [
                asyncio.create_task(self._write(call)),
                asyncio.create_task(self._heartbeat(interval)),
            ]
            try:
                await self._read(call)
            finally:
                for helper in self._helpers:
                    helper.cancel()
                await asyncio.gather(*self._helpers, return_exceptions=True)
        finally:
            call.cancel()

    def _registration(self) -> pb.ConnectRequest:
        s = self._settings
        capacity = Resources(cpu_millis=s.cpu_millis, memory_bytes=s.memory_bytes, gpus=s.gpus)
        return pb.ConnectRequest(
            registration=pb.AgentRegistration(
                node_id=s.node_id,
                hostname=socket.gethostname(),
                capacity=capacity,
                labels=s.labels,
                agent_version=VERSION,
                running=self._attempts.running,
            )
        )

    async def _read(self, call: grpc.aio.StreamStreamCall) -> None:
        while (message := await call.read()) is not grpc.aio.EOF:
            kind = message.WhichOneof("message")
            if kind == "assignment":
                self._attempts.start(message.assignment)
            elif kind == "cancellation":
                self._attempts.cancel(message.cancellation)
            elif kind == "drain":
                self._drained(message.drain)
            else:
                log.info("ignored a message from the provisioner", kind=kind)

    def _drained(self, drain: pb.DrainRequest) -> None:
        log.info(
            "the node is drained: no new attempts",
            node_id=self._settings.node_id,
            reason=drain.reason,
            shutdown_when_empty=drain.shutdown_when_empty,
        )
        if drain.shutdown_when_empty and not self._exiting:
            self._exiting = True
            self._helpers.append(asyncio.create_task(_exit_when_empty(self._attempts)))

    async def _write(self, call: grpc.aio.StreamStreamCall) -> None:
        while (message := await self._outgoing.next()) is not None:
            await call.write(message)
            self._outgoing.sent()
        await call.done_writing()

    async def _heartbeat(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            self._outgoing.put(
                pb.ConnectRequest(
                    heartbeat=pb.Heartbeat(
                        node_id=self._settings.node_id, running=self._attempts.running
                    )
                )
            )


async def _exit_when_empty(attempts: Attempts) -> None:
    """Once no attempt runs, stop the agent as SIGTERM does (the leaving path)."""
    await attempts.until_empty()
    log.info("drained and asked to shut down once empty: the agent stops")
    signal.raise_signal(signal.SIGTERM)

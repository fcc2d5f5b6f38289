"""One Redis connection carrying every concurrent call at once: the online read path.

A prediction reads its features with one HMGET (or one pipeline of them), and
that read is most of what the gateway does per call. redis-py's asyncio client
takes a connection from its pool for each command (two lock acquisitions, a
check that the connection has nothing pending, observability hooks) and reads
the reply through a ``StreamReader``. Measured in one process against a local
Redis, one HMGET of five fields costs 130 µs (65 µs of CPU) that way and 38 µs
(15 µs of CPU) written straight to the socket, the reply parsed by hiredis as
its bytes arrive. coredis, which multiplexes too, took 300 µs through anyio.

So reads are pipelined on one connection, as redis-rs' and Lettuce's multiplexed
connections do: a call writes its commands at once and waits; Redis answers a
connection's commands in order, so replies settle the waiting calls in the order
they wrote. Redis runs commands one at a time whatever the number of
connections, so one connection loses nothing to a pool of them.

Only for commands that get exactly one reply each (HMGET, GET, PING...): no
blocking commands, no pub/sub, no MULTI. Writes and scans stay with redis-py.

Failures: a call waits at most ``timeout`` (``STRATA_REDIS_READ_TIMEOUT``, 2 s by
default); since replies come in order, a call whose reply is that late means the
connection is stuck, so the connection is closed and every call on it fails with
:class:`~strata.core.errors.UnreachableError` (UNAVAILABLE at the gRPC edge), as it
does when the connection drops. The next call connects again. An error reply
(``WRONGTYPE``...) fails its call only.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast

import hiredis

from strata.core.errors import StrataError, UnreachableError
from strata.core.settings import RedisSettings

Command = Sequence[str | bytes | int]
Meanwhile = Callable[[], object]
"""Work done while a call's replies are on their way (:meth:`MultiplexedConnection.execute`)."""


class RedisCommandError(StrataError):
    """Redis answered a command with an error reply (the command, not the connection, failed)."""


class MultiplexedConnection:
    """Sends every caller's commands over one connection to the configured Redis."""

    def __init__(self, settings: RedisSettings, timeout: float | None = None) -> None:
        self._settings = settings
        self._timeout = settings.read_timeout if timeout is None else timeout
        self._wire: _Wire | None = None
        self._connecting = asyncio.Lock()
        self._closed = False

    async def execute(self, *commands: Command, meanwhile: Meanwhile | None = None) -> list[Any]:
        """The replies to ``commands``, sent together in one write, in their order.

        ``meanwhile`` is called once the commands are written and before their replies
        are awaited: work that does not need the replies overlaps the round trip
        (called all the same when there is nothing to send).
        """
        if not commands:
            if meanwhile is not None:
                meanwhile()
            return []
        wire = self._wire
        if wire is None or wire.lost is not None:
            wire = await self._connect()
        return await wire.call(commands, meanwhile)

    async def aclose(self) -> None:
        """Close the connection; calls waiting on it fail, later calls raise."""
        self._closed = True
        if self._wire is not None:
            self._wire.close("the client was closed")

    async def _connect(self) -> _Wire:
        async with self._connecting:
            if self._closed:
                raise UnreachableError("Redis", self._settings.address, "the client was closed")
            if self._wire is not None and self._wire.lost is None:
                return self._wire
            self._wire = await _open(self._settings, self._timeout)
            return self._wire


async def _open(settings: RedisSettings, timeout: float) -> _Wire:
    loop = asyncio.get_running_loop()
    address = settings.address
    try:
        async with asyncio.timeout(timeout):
            _, wire = await loop.create_connection(
                lambda: _Wire(address, timeout), settings.host, settings.port
            )
    except (OSError, TimeoutError) as exc:
        raise UnreachableError("Redis", address, str(exc) or type(exc).__name__) from exc
    hello: list[Command] = []
    if settings.password is not None:
        hello.append(("AUTH", settings.password.get_secret_value()))
    if settings.db:
        hello.append(("SELECT", settings.db))
    if hello:
        try:
            await wire.call(hello)
        except RedisCommandError as exc:
            wire.close(str(exc))
            raise UnreachableError("Redis", address, str(exc)) from exc
    return wire


def _packed(command: Command) -> bytes:
    # hiredis' stub declares a 1-tuple where any tuple of arguments is taken.
    return hiredis.pack_command(tuple(command))  # type: ignore[arg-type,no-any-return]


@dataclass
class _Call:
    """A caller waiting for ``count`` replies, by ``deadline`` (the loop's clock)."""

    future: asyncio.Future[list[Any]]
    count: int
    deadline: float
    replies: list[Any]


class _Wire(asyncio.Protocol):
    """The connection: writes commands, parses replies, settles calls in order."""

    def __init__(self, address: str, timeout: float) -> None:
        self._address = address
        self._timeout = timeout
        self._loop = asyncio.get_running_loop()
        self._reader = hiredis.Reader()
        self._calls: deque[_Call] = deque()
        self._transport: asyncio.Transport | None = None
        self._watch: asyncio.TimerHandle | None = None
        self.lost: str | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream connection's transport writes; uvloop's are not asyncio.Transport
        # subclasses, so this is a cast, not an isinstance check.
        self._transport = cast(asyncio.Transport, transport)

    async def call(
        self, commands: Sequence[Command], meanwhile: Meanwhile | None = None
    ) -> list[Any]:
        if self.lost is not None or self._transport is None:
            raise UnreachableError("Redis", self._address, self.lost or "not connected")
        future: asyncio.Future[list[Any]] = self._loop.create_future()
        deadline = self._loop.time() + self._timeout
        self._calls.append(_Call(future, len(commands), deadline, []))
        self._transport.write(b"".join(_packed(command) for command in commands))
        if self._watch is None:
            self._watch = self._loop.call_at(deadline, self._check_deadline)
        try:
            if meanwhile is not None:
                meanwhile()
        finally:  # the replies are settled (and awaited) even when meanwhile fails
            replies = await future
        errors = [reply for reply in replies if isinstance(reply, hiredis.ReplyError)]
        if errors:
            raise RedisCommandError(f"Redis refused a command: {errors[0]}")
        return replies

    def data_received(self, data: bytes) -> None:
        self._reader.feed(data)
        calls = self._calls
        try:
            reply = self._reader.gets()
            while reply is not False:
                call = calls[0]
                call.replies.append(reply)
                if len(call.replies) == call.count:
                    calls.popleft()
                    if not call.future.done():
                        call.future.set_result(call.replies)
                reply = self._reader.gets()
        except (hiredis.ProtocolError, IndexError) as exc:
            self.close(f"unreadable reply: {exc or 'a reply no call waits for'}")

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(str(exc) if exc else "the server closed the connection")

    def close(self, reason: str) -> None:
        self._fail(reason)
        if self._transport is not None:
            self._transport.abort()

    def _check_deadline(self) -> None:
        """Fail the connection when its oldest call is overdue; else look again at the next
        deadline. One timer per connection, not per call."""
        self._watch = None
        if not self._calls or self.lost is not None:
            return
        oldest = self._calls[0].deadline
        if oldest <= self._loop.time():
            self.close(f"no reply within {self._timeout:g} s")
        else:
            self._watch = self._loop.call_at(oldest, self._check_deadline)

    def _fail(self, reason: str) -> None:
        if self.lost is None:
            self.lost = reason
        if self._watch is not None:
            self._watch.cancel()
            self._watch = None
        while self._calls:
            future = self._calls.popleft().future
            if not future.done():
                future.set_exception(UnreachableError("Redis", self._address, self.lost))

"""The multiplexed connection online features are read over, against the real Redis.

Calls made at once share one connection and each gets its own replies; an error
reply fails its call only; a dropped or stuck connection fails the calls on it as
UnreachableError and the next call connects again. The connection goes through a
:class:`link.Link` where a test counts or cuts connections, and Redis is made to
hold its replies with ``CLIENT PAUSE`` (a ``CLIENT UNPAUSE`` from another client
waits for the pause to end, so it also waits out the pause).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator

import pytest
import redis
from link import Link
from pydantic import SecretStr
from redis.asyncio import Redis

from strata.core.errors import UnreachableError
from strata.core.redis_multiplexed import MultiplexedConnection, RedisCommandError
from strata.core.settings import RedisSettings, load


@pytest.fixture
async def link() -> AsyncIterator[Link]:
    settings = load(RedisSettings)
    link = Link(settings.host, settings.port)
    await link.up()
    try:
        yield link
    finally:
        await link.cut()


@pytest.fixture
async def linked(link: Link) -> AsyncIterator[MultiplexedConnection]:
    """A multiplexed connection to the real Redis through ``link``."""
    settings = load(RedisSettings).model_copy(update={"host": "127.0.0.1", "port": link.port})
    connection = MultiplexedConnection(settings, timeout=5.0)
    try:
        yield connection
    finally:
        await connection.aclose()


@pytest.fixture
async def keys(online: Redis) -> AsyncIterator[str]:
    """A prefix for the test's keys, removed afterwards."""
    prefix = f"test:multiplexed:{uuid.uuid4().hex[:8]}:"
    try:
        yield prefix
    finally:
        async for key in online.scan_iter(match=f"{prefix}*"):
            await online.unlink(key)


async def test_calls_made_at_once_share_one_connection_and_get_their_own_replies(
    online: Redis, linked: MultiplexedConnection, link: Link, keys: str
) -> None:
    big = b"x" * 1_000_000  # a reply that arrives in many pieces
    for n in range(200):
        await online.hset(f"{keys}{n}", mapping={"n": str(n), "big": big if n == 7 else b"-"})

    async def read(n: int) -> list[object]:
        return await linked.execute(("HMGET", f"{keys}{n}", "n", "big", "absent"))

    async def read_two(n: int) -> list[object]:
        return await linked.execute(("HGET", f"{keys}{n}", "n"), ("HGET", f"{keys}{n + 1}", "n"))

    singles, pairs = await asyncio.gather(
        asyncio.gather(*(read(n) for n in range(200))),
        asyncio.gather(*(read_two(n) for n in range(0, 198, 2))),
    )

    assert singles == [[[str(n).encode(), big if n == 7 else b"-", None]] for n in range(200)]
    assert pairs == [[str(n).encode(), str(n + 1).encode()] for n in range(0, 198, 2)]
    assert await linked.execute() == []  # nothing to send: nothing to wait for
    assert link.accepted == 1


async def test_an_error_reply_fails_its_own_call_only(
    online: Redis, linked: MultiplexedConnection, keys: str
) -> None:
    await online.set(f"{keys}text", "not a hash")
    await online.hset(f"{keys}hash", mapping={"a": "1"})

    outcomes = await asyncio.gather(
        linked.execute(("HMGET", f"{keys}text", "a")),
        linked.execute(("HMGET", f"{keys}hash", "a")),
        return_exceptions=True,
    )

    wrong, right = outcomes
    assert isinstance(wrong, RedisCommandError)
    assert "WRONGTYPE" in str(wrong)
    assert right == [[b"1"]]
    assert await linked.execute(("HGET", f"{keys}hash", "a")) == [b"1"]


async def test_meanwhile_runs_once_the_commands_are_sent_and_its_failure_loses_no_reply(
    keys: str,
) -> None:
    """What runs meanwhile sees the call's command already done by Redis (read from another
    connection); when it fails, the call's reply is still taken, so the next call gets
    its own. Straight to Redis: a link would forward nothing while meanwhile holds the loop."""
    settings = load(RedisSettings)
    linked = MultiplexedConnection(settings)
    password = settings.password.get_secret_value() if settings.password else None
    peer = redis.Redis(host=settings.host, port=settings.port, db=settings.db, password=password)
    seen: list[object] = []

    def look() -> None:
        time.sleep(0.05)  # Redis runs what it was sent meanwhile
        seen.append(peer.get(f"{keys}sent"))

    def fail() -> None:
        raise ValueError("meanwhile failed")

    try:
        assert await linked.execute(("SET", f"{keys}sent", "yes"), meanwhile=look) == [b"OK"]
        assert seen == [b"yes"]
        with pytest.raises(ValueError, match="meanwhile failed"):
            await linked.execute(("SET", f"{keys}other", "1"), meanwhile=fail)
        assert await linked.execute(("GET", f"{keys}sent")) == [b"yes"]
        assert await linked.execute(meanwhile=lambda: seen.append(None)) == []
        assert seen == [b"yes", None]
    finally:
        peer.close()
        await linked.aclose()


async def test_a_dropped_connection_fails_its_waiting_calls_and_the_next_call_connects_again(
    online: Redis, linked: MultiplexedConnection, link: Link, keys: str
) -> None:
    await online.hset(f"{keys}hash", mapping={"a": "1"})
    assert await linked.execute(("HGET", f"{keys}hash", "a")) == [b"1"]
    await online.client_pause(1500)
    try:
        waiting = asyncio.ensure_future(linked.execute(("HGET", f"{keys}hash", "a")))
        await asyncio.sleep(0.2)
        assert not waiting.done(), "Redis holds the reply while paused"
        await link.cut()
        with pytest.raises(UnreachableError) as dropped:
            await waiting
        with pytest.raises(UnreachableError) as refused:
            await linked.execute(("HGET", f"{keys}hash", "a"))
    finally:
        await online.client_unpause()
    assert dropped.value.component == "Redis"
    assert refused.value.address == f"127.0.0.1:{link.port}"

    await link.up()
    assert await linked.execute(("HGET", f"{keys}hash", "a")) == [b"1"]
    assert link.accepted == 2


async def test_a_connection_stuck_past_the_timeout_fails_every_call_on_it(
    online: Redis, keys: str
) -> None:
    await online.hset(f"{keys}hash", mapping={"a": "1"})
    settings = load(RedisSettings).model_copy(update={"read_timeout": 0.3})
    connection = MultiplexedConnection(settings)
    try:
        assert await connection.execute(("HGET", f"{keys}hash", "a")) == [b"1"]
        await online.client_pause(1000)
        try:
            outcomes = await asyncio.gather(
                connection.execute(("HGET", f"{keys}hash", "a")),
                connection.execute(("HGET", f"{keys}hash", "a")),
                return_exceptions=True,
            )
        finally:
            await online.client_unpause()
        first, second = outcomes
        assert isinstance(first, UnreachableError)
        assert isinstance(second, UnreachableError)
        assert "no reply within 0.3 s" in str(first)
        assert await connection.execute(("HGET", f"{keys}hash", "a")) == [b"1"]
    finally:
        await connection.aclose()


async def test_the_configured_database_is_selected(online: Redis, keys: str) -> None:
    settings = load(RedisSettings)
    other = settings.model_copy(update={"db": settings.db + 1})
    writer = Redis(host=other.host, port=other.port, db=other.db)
    first, second = MultiplexedConnection(settings), MultiplexedConnection(other)
    try:
        await writer.set(f"{keys}where", "other db")
        assert await second.execute(("GET", f"{keys}where")) == [b"other db"]
        assert await first.execute(("GET", f"{keys}where")) == [None]
    finally:
        await writer.delete(f"{keys}where")
        await writer.aclose()
        await first.aclose()
        await second.aclose()


async def test_a_refused_password_says_why_and_a_closed_connection_refuses_calls() -> None:
    settings = load(RedisSettings)
    wrong = settings.model_copy(update={"password": SecretStr("not-the-password")})
    connection = MultiplexedConnection(wrong)
    try:
        with pytest.raises(UnreachableError) as refused:
            await connection.execute(("PING",))
    finally:
        await connection.aclose()
    assert "AUTH" in refused.value.reason or "password" in refused.value.reason

    with pytest.raises(UnreachableError, match="closed"):
        await connection.execute(("PING",))

"""A server that is not there reads as one line naming it and its address.

Each ping is pointed at a loopback port nobody listens on; no server is needed.
"""

from __future__ import annotations

import socket
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from strata.core import blobs, kafka, postgres, redis
from strata.core.errors import UnreachableError
from strata.core.settings import BlobSettings, KafkaSettings, PostgresSettings, RedisSettings


@pytest.fixture(scope="module")
def closed_port() -> int:
    """A loopback port that was free a moment ago and that nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def ping_of(component: str, port: int) -> tuple[Callable[[], Awaitable[object]], str]:
    """The ping of ``component`` aimed at ``port``, and the address it must name."""
    if component == "Kafka":
        kafka_settings = KafkaSettings(port=port)
        return lambda: kafka.ping(kafka_settings, 2.0), f"127.0.0.1:{port}"
    if component == "Postgres":
        pg_settings = PostgresSettings(port=port)
        return lambda: postgres.ping(pg_settings, 2.0), f"127.0.0.1:{port}"
    if component == "Redis":
        redis_settings = RedisSettings(port=port)
        return lambda: redis.ping(redis_settings, 2.0), f"127.0.0.1:{port}"
    s3_settings = BlobSettings(backend="s3", s3_port=port)
    return lambda: blobs.ping(s3_settings, 2.0), f"http://127.0.0.1:{port}"


@pytest.mark.parametrize("component", ["Kafka", "Postgres", "Redis", "S3"])
async def test_ping_of_a_closed_port_names_component_and_address(
    component: str, closed_port: int
) -> None:
    ping, address = ping_of(component, closed_port)

    with pytest.raises(UnreachableError) as caught:
        await ping()

    error = caught.value
    assert (error.component, error.address) == (component, address)
    message = str(error)
    assert message.startswith(f"{component} is not reachable at {address}: ")
    assert "\n" not in message
    assert error.__suppress_context__  # printed alone, not over the library's traceback


async def test_opening_a_pool_on_a_closed_port_is_one_clear_error(closed_port: int) -> None:
    with pytest.raises(
        UnreachableError, match=f"Postgres is not reachable at 127.0.0.1:{closed_port}"
    ):
        await postgres.create_pool(PostgresSettings(port=closed_port))


async def test_local_store_ping_names_a_folder_it_cannot_write(tmp_path: Path) -> None:
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("in the way")
    root = not_a_folder / "blobs"

    with pytest.raises(UnreachableError, match=f"not reachable at {root}: "):
        await blobs.ping(BlobSettings(backend="local", root=root))

    await blobs.ping(BlobSettings(backend="local", root=tmp_path / "fine"))

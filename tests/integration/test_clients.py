"""The connection helpers against the real local stack.

A record produced here is consumed by another process; a Postgres query and a
Redis round trip work; a 64 MiB blob comes back from S3 (multipart) and from the
local store with the same sha256; a corrupted blob is refused on read.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import sys
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import aioboto3
import pytest
from aiokafka import TopicPartition
from aiokafka.admin import NewTopic

from strata.core import blobs, kafka, postgres, redis
from strata.core.blobs import (
    BlobIntegrityError,
    BlobNotFoundError,
    BlobStore,
    LocalBlobStore,
    S3BlobStore,
)
from strata.core.settings import (
    BlobSettings,
    KafkaSettings,
    PostgresSettings,
    RedisSettings,
    load,
)

if TYPE_CHECKING:
    from aiobotocore.session import ClientCreatorContext
    from types_aiobotocore_s3 import S3Client

pytestmark = pytest.mark.integration

PEER = Path(__file__).with_name("kafka_peer.py")
MIB = 1024 * 1024


@dataclass(frozen=True)
class Blob:
    data: bytes
    sha256: str


@pytest.fixture(scope="module")
def big() -> Blob:
    data = os.urandom(64 * MIB)
    return Blob(data, hashlib.sha256(data).hexdigest())


@pytest.fixture
def prefix() -> str:
    return f"test/clients/{uuid.uuid4().hex[:12]}/"


@pytest.fixture
def s3_settings() -> BlobSettings:
    """The stack's S3 server, whatever STRATA_BLOB_BACKEND says."""
    return load(BlobSettings).model_copy(update={"backend": "s3"})


@pytest.fixture(params=["local", "s3"])
async def store(
    request: pytest.FixtureRequest, s3_settings: BlobSettings, tmp_path: Path, prefix: str
) -> AsyncIterator[BlobStore]:
    """Each store in turn; whatever a test leaves under its prefix is removed after."""
    settings = s3_settings
    if request.param == "local":
        settings = settings.model_copy(update={"backend": "local", "root": tmp_path / "blobs"})
    async with blobs.open_blob_store(settings) as opened:
        yield opened
        for key in await opened.list(prefix):
            await opened.delete(key)


async def test_every_server_of_the_stack_answers_a_ping(s3_settings: BlobSettings) -> None:
    await kafka.ping(load(KafkaSettings))
    await postgres.ping(load(PostgresSettings))
    await redis.ping(load(RedisSettings))
    await blobs.ping(s3_settings)


async def test_a_record_produced_here_is_consumed_by_another_process() -> None:
    topic, group = f"test.clients.{uuid.uuid4().hex[:12]}", f"test-peer-{uuid.uuid4().hex[:8]}"
    records = [(f"run-{n}".encode(), os.urandom(64)) for n in range(5)]
    admin = kafka.admin(load(KafkaSettings))
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])
        await produce(topic, records)

        received = await run_peer(topic, group, len(records))

        assert received == records
        committed = await admin.list_consumer_group_offsets(group)
        assert committed[TopicPartition(topic, 0)].offset == len(records)
    finally:
        await admin.delete_topics([topic])
        await admin.close()


async def produce(topic: str, records: list[tuple[bytes, bytes]]) -> None:
    producer = kafka.producer(load(KafkaSettings))
    await producer.start()
    try:
        for key, value in records:
            await producer.send_and_wait(topic, value, key=key)
    finally:
        await producer.stop()


async def run_peer(topic: str, group: str, count: int) -> list[tuple[bytes, bytes]]:
    peer = await asyncio.create_subprocess_exec(
        sys.executable,
        str(PEER),
        topic,
        group,
        str(count),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await peer.communicate()
    assert peer.returncode == 0, err.decode()
    lines = [json.loads(line) for line in out.decode().splitlines()]
    return [(bytes.fromhex(line["key"]), bytes.fromhex(line["value"])) for line in lines]


async def test_a_query_runs_on_a_pool_sized_by_settings() -> None:
    settings = load(PostgresSettings)
    pool = await postgres.create_pool(settings)
    try:
        assert (pool.get_min_size(), pool.get_max_size()) == (settings.pool_min, settings.pool_max)
        row = await pool.fetchrow("SELECT current_database() AS db, $1::int + 1 AS answer", 41)
        assert row is not None
        assert (row["db"], row["answer"]) == (settings.database, 42)
    finally:
        await pool.close()


async def test_a_value_round_trips_through_redis() -> None:
    key, value = f"test:clients:{uuid.uuid4().hex}", os.urandom(32)
    client = redis.client(load(RedisSettings))
    try:
        await client.set(key, value, ex=60)
        assert await client.get(key) == value  # raw bytes, no decoding
    finally:
        await client.delete(key)
        await client.aclose()


async def test_a_64_mib_blob_round_trips_with_the_same_sha256(
    store: BlobStore, big: Blob, prefix: str
) -> None:
    key = prefix + "big.bin"

    info = await store.put(key, big.data)

    assert (info.size, info.sha256) == (len(big.data), big.sha256)
    assert hashlib.sha256(await store.get(key)).hexdigest() == big.sha256
    streamed = hashlib.sha256()
    async for chunk in store.open(key):
        streamed.update(chunk)
    assert streamed.hexdigest() == big.sha256
    assert await store.stat(key) == info


async def test_a_large_blob_goes_to_s3_in_parts(
    s3_settings: BlobSettings, big: Blob, prefix: str
) -> None:
    settings = s3_settings
    async with S3BlobStore(settings) as store:
        await store.put(prefix + "big.bin", big.data)
        try:
            async with raw_s3(settings) as s3:
                head = await s3.head_object(Bucket=settings.bucket, Key=prefix + "big.bin")
        finally:
            await store.delete(prefix + "big.bin")
    parts = len(big.data) // settings.multipart_chunk
    assert head["ETag"].strip('"').endswith(f"-{parts}")  # S3's mark of a multipart upload
    assert head["Metadata"]["sha256"] == big.sha256


@pytest.mark.parametrize("source", ["stream", "file"])
async def test_streams_and_files_upload_to_s3(
    s3_settings: BlobSettings, tmp_path: Path, prefix: str, source: str
) -> None:
    data = os.urandom(20 * MIB)  # above the multipart threshold
    upload = tmp_path / "upload.bin"
    upload.write_bytes(data)

    async def pieces() -> AsyncIterator[bytes]:
        for start in range(0, len(data), 3 * MIB):
            yield data[start : start + 3 * MIB]

    async with S3BlobStore(s3_settings) as store:
        try:
            info = await store.put(prefix + source, pieces() if source == "stream" else upload)
            assert info.sha256 == hashlib.sha256(data).hexdigest()
            assert await store.get(prefix + source) == data
        finally:
            await store.delete(prefix + source)


async def test_a_corrupted_blob_is_refused_naming_its_key(store: BlobStore, prefix: str) -> None:
    key = prefix + "model.onnx"
    await store.put(key, b"the real model")

    await corrupt(store, key, b"something else")

    with pytest.raises(BlobIntegrityError, match=f"'{key}' failed its integrity check"):
        await store.get(key)
    with pytest.raises(BlobIntegrityError):
        async for _ in store.open(key):
            pass


async def corrupt(store: BlobStore, key: str, data: bytes) -> None:
    """Replace the stored bytes behind the store's back, keeping the recorded sha256."""
    if isinstance(store, LocalBlobStore):
        (store.root / key).write_bytes(data)
        return
    assert isinstance(store, S3BlobStore)
    bucket = store.settings.bucket
    async with raw_s3(store.settings) as s3:
        head = await s3.head_object(Bucket=bucket, Key=key)
        await s3.put_object(Bucket=bucket, Key=key, Body=data, Metadata=head["Metadata"])


async def test_every_store_keeps_the_same_contract(store: BlobStore, prefix: str) -> None:
    for name in ["b", "a", "sub/c"]:
        await store.put(prefix + name, name.encode())

    assert await store.list(prefix) == [prefix + "a", prefix + "b", prefix + "sub/c"]
    assert await store.exists(prefix + "a")
    await store.delete(prefix + "a")
    await store.delete(prefix + "a")
    assert not await store.exists(prefix + "a")
    with pytest.raises(BlobNotFoundError, match=f"'{prefix}a'"):
        await store.get(prefix + "a")
    with pytest.raises(ValueError, match="invalid blob key"):
        await store.put(prefix + "../escape", b"x")


def raw_s3(settings: BlobSettings) -> ClientCreatorContext[S3Client]:
    """A plain aioboto3 client, to reach past the store in tests."""
    return aioboto3.Session().client(
        "s3",
        endpoint_url=settings.endpoint_url,
        region_name=settings.s3_region,
        aws_access_key_id=settings.s3_access_key.get_secret_value(),
        aws_secret_access_key=settings.s3_secret_key.get_secret_value(),
    )

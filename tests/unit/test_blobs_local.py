"""The local-filesystem blob store: what goes in comes out, or a clear error says why.

Large-object round trips (64 MiB) through both stores live in
tests/integration/test_clients.py; these cover the contract on small blobs.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from strata.core.blobs import (
    BlobData,
    BlobIntegrityError,
    BlobNotFoundError,
    BlobStore,
    LocalBlobStore,
    open_blob_store,
)
from strata.core.errors import NotFoundError
from strata.core.settings import BlobSettings

DATA = b"strata blob " * 100_000  # ~1.2 MiB: several chunks
SHA256 = hashlib.sha256(DATA).hexdigest()


@pytest.fixture
def store(tmp_path: Path) -> BlobStore:
    return open_blob_store(BlobSettings(backend="local", root=tmp_path / "blobs"))


async def pieces(data: bytes, size: int = 65_536) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


def leftovers(root: Path) -> list[Path]:
    return list((root / ".strata" / "tmp").glob("*"))


async def test_opens_the_local_backend_from_settings(store: BlobStore, tmp_path: Path) -> None:
    assert isinstance(store, LocalBlobStore)
    assert store.root == tmp_path / "blobs"


@pytest.mark.parametrize("source", ["bytes", "stream", "file"])
async def test_round_trip_from_each_kind_of_source(
    store: BlobStore, tmp_path: Path, source: str
) -> None:
    upload = tmp_path / "upload.bin"
    upload.write_bytes(DATA)
    sources: dict[str, BlobData] = {"bytes": DATA, "stream": pieces(DATA), "file": upload}
    data = sources[source]

    info = await store.put("models/churn/1/model.onnx", data)

    assert (info.key, info.size, info.sha256) == ("models/churn/1/model.onnx", len(DATA), SHA256)
    assert await store.get("models/churn/1/model.onnx") == DATA
    assert await store.stat("models/churn/1/model.onnx") == info


async def test_blobs_are_plain_files_under_the_root(store: LocalBlobStore) -> None:
    await store.put("offline/views/trips/part-0.parquet", DATA)
    assert (store.root / "offline/views/trips/part-0.parquet").read_bytes() == DATA
    assert leftovers(store.root) == []


async def test_streamed_read_yields_the_blob_in_chunks(store: BlobStore) -> None:
    await store.put("a/b", DATA)
    chunks = [chunk async for chunk in store.open("a/b", chunk_size=100_000)]
    assert len(chunks) > 1
    assert b"".join(chunks) == DATA


async def test_empty_blob_round_trips(store: BlobStore) -> None:
    info = await store.put("empty", b"")
    assert info.size == 0
    assert info.sha256 == hashlib.sha256(b"").hexdigest()
    assert await store.get("empty") == b""


async def test_put_replaces_the_blob_and_its_sha256(store: BlobStore) -> None:
    await store.put("k", b"first")
    info = await store.put("k", b"second")
    assert await store.get("k") == b"second"
    assert (await store.stat("k")).sha256 == info.sha256 == hashlib.sha256(b"second").hexdigest()


async def test_corrupted_bytes_are_refused_naming_the_key(store: LocalBlobStore) -> None:
    await store.put("runs/7/out.bin", DATA)
    path = store.root / "runs/7/out.bin"
    with path.open("r+b") as file:
        file.seek(len(DATA) // 2)
        file.write(b"X")

    with pytest.raises(BlobIntegrityError, match=r"'runs/7/out\.bin'.*sha256"):
        await store.get("runs/7/out.bin")
    with pytest.raises(BlobIntegrityError, match=r"runs/7/out\.bin"):
        async for _ in store.open("runs/7/out.bin"):
            pass


async def test_a_blob_without_a_recorded_sha256_is_refused(store: LocalBlobStore) -> None:
    (store.root / "dropped").parent.mkdir(parents=True, exist_ok=True)
    (store.root / "dropped").write_bytes(b"copied in by hand")
    with pytest.raises(BlobIntegrityError, match="no sha256"):
        await store.get("dropped")


async def test_missing_blob_is_not_found_naming_the_key(store: BlobStore) -> None:
    with pytest.raises(BlobNotFoundError, match="'no/such/blob'") as caught:
        await store.get("no/such/blob")
    assert isinstance(caught.value, NotFoundError)
    with pytest.raises(BlobNotFoundError):
        await store.stat("no/such/blob")
    with pytest.raises(BlobNotFoundError):
        async for _ in store.open("no/such/blob"):
            pass


async def test_exists_and_delete(store: BlobStore) -> None:
    await store.put("x/y", b"1")
    assert await store.exists("x/y")
    assert not await store.exists("x")  # a folder is not a blob

    await store.delete("x/y")
    await store.delete("x/y")  # deleting nothing is fine

    assert not await store.exists("x/y")
    with pytest.raises(BlobNotFoundError):
        await store.get("x/y")


async def test_list_is_a_sorted_string_prefix_match(store: BlobStore) -> None:
    for key in ["runs/10/a", "runs/1/b", "runs/1/a", "runs/2", "other"]:
        await store.put(key, b".")

    assert await store.list("runs/1") == ["runs/1/a", "runs/1/b", "runs/10/a"]
    assert await store.list("runs/1/") == ["runs/1/a", "runs/1/b"]
    assert await store.list() == ["other", "runs/1/a", "runs/1/b", "runs/10/a", "runs/2"]
    assert await store.list("nothing/here/") == []


@pytest.mark.parametrize(
    "key", ["", "/etc/passwd", "../outside", "a/../../b", "a//b", "a/./b", "a/", ".hidden", "a\\b"]
)
async def test_a_bad_key_is_refused_naming_it(store: BlobStore, key: str) -> None:
    with pytest.raises(ValueError, match="invalid blob key") as caught:
        await store.put(key, b"x")
    assert repr(key) in str(caught.value)
    with pytest.raises(ValueError, match="invalid blob key"):
        await store.get(key)


async def test_a_bad_list_prefix_is_refused(store: BlobStore) -> None:
    with pytest.raises(ValueError, match="prefix"):
        await store.list("../")


async def test_a_failed_stream_leaves_nothing_behind(store: LocalBlobStore) -> None:
    async def broken() -> AsyncIterator[bytes]:
        yield b"partial"
        raise OSError("upstream went away")

    with pytest.raises(OSError, match="upstream"):
        await store.put("half", broken())

    assert not await store.exists("half")
    assert leftovers(store.root) == []


async def test_data_of_the_wrong_type_is_refused_naming_the_argument(store: BlobStore) -> None:
    with pytest.raises(TypeError, match="data must be bytes"):
        await store.put("k", "text, not bytes")  # type: ignore[arg-type]


async def test_a_key_cannot_be_both_a_blob_and_a_folder(store: BlobStore) -> None:
    await store.put("a", b"blob")
    with pytest.raises(ValueError, match="'a/b' clashes"):
        await store.put("a/b", b"under a blob")
    assert await store.get("a") == b"blob"

"""Code bundles on this node: fetched once, checked against their sha256, extracted safely.

An assignment names its bundle by ``BundleRef`` (uri and sha256). The first
attempt needing a bundle downloads it from the blob store, checks the archive's
sha256 against the one the assignment names (a mismatch fails the attempt naming
both hashes, and nothing of it is extracted or run), and extracts it into
``<state dir>/bundles/<sha256>/``: next to it first, then renamed into place, so
a folder under that name is always a complete, checked bundle, and an agent
restarted on the node finds it again. Extraction uses tarfile's ``data`` filter:
absolute paths, ``..``, links pointing out of the folder and device files are
refused (the whole bundle with them). Attempts of one bundle arriving together
wait for one download.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import shutil
import tarfile
import tempfile
from pathlib import Path

from strata.api.common.v1.refs_pb2 import BundleRef
from strata.core.blobs import BlobStore
from strata.core.bundles import key_of, valid_sha256
from strata.core.settings import BlobSettings


class BundleError(Exception):
    """The bundle cannot be used: not fetched, not what its sha256 says, or not extractable."""


def checked(archive: bytes, expected: str) -> None:
    """Raise BundleError naming both hashes unless ``archive`` has the sha256 ``expected``."""
    actual = hashlib.sha256(archive).hexdigest()
    if actual != expected:
        raise BundleError(
            f"bundle sha256 mismatch: the assignment names {expected}, "
            f"the archive fetched has {actual}; nothing was run"
        )


def extract(archive: bytes, folder: Path) -> None:
    """Extract ``archive`` (a .tar.gz) into ``folder``, refusing members that would land
    outside it; a BundleError says which member and why."""
    try:
        with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
            tar.extractall(folder, filter=_within)
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise BundleError(f"bundle cannot be extracted: {exc}") from exc


def _within(member: tarfile.TarInfo, folder: str) -> tarfile.TarInfo | None:
    """tarfile's ``data`` filter, but an absolute name is refused rather than made relative:
    an archive the SDK packed never holds one."""
    if member.name.startswith("/"):
        raise tarfile.AbsolutePathError(member)
    return tarfile.data_filter(member, folder)


class Bundles:
    """The bundles extracted on this node, under ``root``, each fetched at most once."""

    def __init__(self, root: Path, blobs: BlobStore, settings: BlobSettings) -> None:
        self._root = root
        self._blobs = blobs
        self._settings = settings
        self._fetching: dict[str, asyncio.Lock] = {}

    async def folder(self, ref: BundleRef) -> Path:
        """The extracted folder of ``ref``, fetched and checked first if not here yet."""
        if not valid_sha256(ref.sha256):
            raise BundleError(f"bundle sha256 {ref.sha256!r} is not 64 lower-case hex digits")
        target = self._root / ref.sha256
        lock = self._fetching.setdefault(ref.sha256, asyncio.Lock())
        async with lock:
            if not target.is_dir():
                await self._fetch(ref, target)
        return target

    async def _fetch(self, ref: BundleRef, target: Path) -> None:
        try:
            key = key_of(ref.uri, self._settings)
            archive = await self._blobs.get(key)
        except Exception as exc:  # whatever the store raises, the attempt fails saying it
            raise BundleError(f"bundle {ref.uri} cannot be fetched: {exc}") from exc
        checked(archive, ref.sha256)
        await asyncio.to_thread(_install, archive, self._root, target)


def _install(archive: bytes, root: Path, target: Path) -> None:
    """Extract next to ``target``, then rename it into place (atomic on one filesystem)."""
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=root))
    try:
        extract(archive, staging)
        try:
            staging.rename(target)
        except OSError:
            if not target.is_dir():  # not another agent of this node having won the race
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)

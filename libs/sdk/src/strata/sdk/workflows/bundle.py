"""A project packaged as a content-addressed code bundle, stored once in the blob store.

The project is the folder of the workflow file given to ``strata workflow apply``:
an entrypoint is ``module:function`` relative to that folder (the SDK names it
from ``function.__module__``, and the file's siblings are imported from there),
so the agent's worker puts the extracted bundle first on ``sys.path`` and imports
exactly what the file imported on the user's machine. Everything below the folder
goes in but what is never code to run: version control, virtualenvs, caches and
compiled files (:data:`EXCLUDED_DIRS`, :data:`EXCLUDED_SUFFIXES`, and any folder
holding a ``pyvenv.cfg``). Symbolic links are left out: what they point at is not
the project's to ship.

The archive is deterministic, so the same code gives the same sha256 on any
machine: entries sorted by path, every mtime 0, owner 0/0 without names, modes
0644 (0755 for a file its owner may execute), and a gzip header without a name or
time. It is stored under ``bundles/<sha256>.tar.gz`` (:mod:`strata.core.bundles`)
unless an object is there already: applying the same code twice uploads nothing.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import stat
import tarfile
from dataclasses import dataclass
from pathlib import Path

from strata.api.common.v1.refs_pb2 import BundleRef
from strata.core.blobs import BlobStore
from strata.core.bundles import bundle_key, bundle_uri
from strata.core.settings import BlobSettings

EXCLUDED_DIRS = frozenset(
    {
        ".git",
        ".hg",
        ".svn",
        ".venv",
        "venv",
        "__pycache__",
        ".mypy_cache",
        ".pytest_cache",
        ".ruff_cache",
        ".tox",
        ".nox",
        ".ipynb_checkpoints",
        "node_modules",
        ".stack",
    }
)
"""Folders never packed, wherever they are in the project."""
EXCLUDED_SUFFIXES = (".pyc", ".pyo")
EXCLUDED_FILES = frozenset({".DS_Store"})


@dataclass(frozen=True)
class Bundle:
    """A packed project: the archive and its sha256 (lower-case hex)."""

    archive: bytes
    sha256: str
    files: tuple[str, ...]
    """The packed files' paths, relative to the project folder, in archive order."""


def project_files(root: Path) -> list[str]:
    """The files of the project at ``root`` that go into its bundle, sorted (posix paths)."""
    found: list[str] = []
    for folder, dirs, files in os.walk(root):
        here = Path(folder)
        dirs[:] = [
            d
            for d in dirs
            if d not in EXCLUDED_DIRS
            and not (here / d).is_symlink()
            and not (here / d / "pyvenv.cfg").exists()
        ]
        for name in files:
            path = here / name
            if name in EXCLUDED_FILES or name.endswith(EXCLUDED_SUFFIXES) or path.is_symlink():
                continue
            if path.is_file():
                found.append(path.relative_to(root).as_posix())
    return sorted(found)


def pack(root: Path) -> Bundle:
    """The bundle of the project at ``root`` (a folder), byte for byte the same for the
    same files whatever their times, owners or the order the filesystem lists them in."""
    root = root.resolve()
    files = project_files(root)
    raw = io.BytesIO()
    with (
        gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as zipped,
        tarfile.open(fileobj=zipped, mode="w", format=tarfile.PAX_FORMAT) as archive,
    ):
        for name in files:
            path = root / name
            data = path.read_bytes()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = 0
            info.mode = 0o755 if path.stat().st_mode & stat.S_IXUSR else 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            archive.addfile(info, io.BytesIO(data))
    archive_bytes = raw.getvalue()
    return Bundle(archive_bytes, hashlib.sha256(archive_bytes).hexdigest(), tuple(files))


async def store(bundle: Bundle, blobs: BlobStore, settings: BlobSettings) -> BundleRef:
    """Put ``bundle`` in the blob store unless it is there already (its key is its
    sha256, so what is there is the same archive); its ref."""
    key = bundle_key(bundle.sha256)
    if not await blobs.exists(key):
        await blobs.put(key, bundle.archive)
    return reference(bundle, settings)


def reference(bundle: Bundle, settings: BlobSettings) -> BundleRef:
    """The ref of ``bundle`` without storing it (``apply --validate-only``)."""
    return BundleRef(uri=bundle_uri(settings, bundle.sha256), sha256=bundle.sha256)

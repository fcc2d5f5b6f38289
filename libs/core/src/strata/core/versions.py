"""Versions of an applied spec (a workflow, a feature view): when an apply makes a new one.

A spec is identified by the SHA-256 of its deterministic serialisation, so applying
the same declaration twice (from any client) is recognised as unchanged.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from google.protobuf.message import Message


def spec_sha256(spec: Message) -> str:
    """Lower-case hex SHA-256 of the canonical bytes of ``spec``."""
    return hashlib.sha256(spec.SerializeToString(deterministic=True)).hexdigest()


@dataclass(frozen=True)
class Apply:
    """What applying a spec does: store ``version`` when ``changed``, else keep the current."""

    version: int
    changed: bool


def next_version(current_version: int | None, current_sha256: str | None, sha256: str) -> Apply:
    """The outcome of applying a spec hashing to ``sha256`` over the current version (None: new)."""
    if current_version is None:
        return Apply(version=1, changed=True)
    if current_sha256 == sha256:
        return Apply(version=current_version, changed=False)
    return Apply(version=current_version + 1, changed=True)

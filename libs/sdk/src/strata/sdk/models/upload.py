"""Streaming an artifact to the registry: a header, then chunks, each well under gRPC's limit."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

from strata.api.registry.v1 import registry_pb2 as pb
from strata.api.registry.v1.registry_pb2_grpc import ModelRegistryServiceStub

CHUNK = 1024 * 1024
"""Bytes per upload message: a quarter of gRPC's default 4 MiB message limit."""

ONNX_MEDIA_TYPE = "application/onnx"


@dataclass(frozen=True)
class ArtifactFile:
    """A file to store beside the ONNX model, e.g. a report or a data sample."""

    name: str
    kind: pb.ArtifactKind.ValueType
    data: bytes
    media_type: str = "application/octet-stream"


async def upload(
    registry: ModelRegistryServiceStub, model_name: str, artifact: ArtifactFile
) -> pb.Artifact:
    """Upload ``artifact`` for ``model_name``; the registry checks its size and sha256."""
    header = pb.ArtifactHeader(
        model_name=model_name,
        name=artifact.name,
        kind=artifact.kind,
        media_type=artifact.media_type,
        size_bytes=len(artifact.data),
        sha256=hashlib.sha256(artifact.data).hexdigest(),
    )
    reply: pb.UploadArtifactResponse = await registry.UploadArtifact(
        _messages(header, artifact.data)
    )
    return reply.artifact


async def _messages(
    header: pb.ArtifactHeader, data: bytes
) -> AsyncIterator[pb.UploadArtifactRequest]:
    yield pb.UploadArtifactRequest(header=header)
    for start in range(0, len(data), CHUNK):
        yield pb.UploadArtifactRequest(chunk=data[start : start + CHUNK])

"""How large an uploaded artifact may be, by kind: refused from the header, naming both sizes.

A limit per kind because the kinds differ by orders of magnitude: a report is
kilobytes, an ONNX model up to protobuf's 2 GiB. Checked on the size the header
announces, so an upload too large is refused before a byte is stored; the upload
itself refuses any byte past that announced size.
"""

from __future__ import annotations

from dataclasses import dataclass

from strata.api.registry.v1 import registry_pb2 as pb
from strata.core.errors import InvalidArgumentError


@dataclass(frozen=True)
class SizeLimits:
    """The most bytes an artifact of each kind may have."""

    onnx_model: int
    report: int
    data_sample: int

    def check(self, header: pb.ArtifactHeader) -> None:
        """Refuse ``header`` if it announces more bytes than its kind may have."""
        kind, limit = self._of(header.kind)
        if header.size_bytes > limit:
            raise InvalidArgumentError(
                "header.size_bytes",
                f"{header.name!r} is {header.size_bytes} bytes; {kind} artifacts may have "
                f"at most {limit} bytes (setting STRATA_REGISTRY_MAX_{kind.upper()}_BYTES)",
            )

    def _of(self, kind: int) -> tuple[str, int]:
        if kind == pb.ARTIFACT_KIND_ONNX_MODEL:
            return "onnx_model", self.onnx_model
        if kind == pb.ARTIFACT_KIND_REPORT:
            return "report", self.report
        return "data_sample", self.data_sample

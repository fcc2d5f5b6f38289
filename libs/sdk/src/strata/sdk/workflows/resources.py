"""Resource requests as people write them (``cpu=2, memory="4Gi", gpu=0``), parsed into
the proto's units (thousandths of a core, bytes, whole GPUs).

The spellings follow Kubernetes quantities, so a request reads the same here as in a
pod spec: CPU as cores (``2``, ``0.5``) or millicores (``"500m"``), memory as bytes
or with a binary (``Ki Mi Gi Ti``) or decimal (``k M G T``) suffix.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

from strata.api.common.v1.resources_pb2 import Resources as ResourcesProto
from strata.core.errors import InvalidArgumentError

_MEMORY_UNITS = {
    "": 1,
    "k": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
}
_QUANTITY = re.compile(r"^\s*(?P<number>\d+(\.\d+)?)\s*(?P<unit>[A-Za-z]*)\s*$")


@dataclass(frozen=True)
class Resources:
    """What a task asks for, and so its hard limit on the node.

    ``field`` prefixes error messages with where the request was written, e.g.
    ``tasks[train].resources``.
    """

    cpu_millis: int = 0
    memory_bytes: int = 0
    gpus: int = 0

    @classmethod
    def parse(
        cls,
        *,
        cpu: float | str | None = None,
        memory: int | str | None = None,
        gpu: int | None = None,
        field: str = "resources",
    ) -> Resources:
        """Parse a request; each bad value is an InvalidArgumentError naming its field."""
        return cls(
            cpu_millis=0 if cpu is None else parse_cpu(cpu, f"{field}.cpu"),
            memory_bytes=0 if memory is None else parse_memory(memory, f"{field}.memory"),
            gpus=0 if gpu is None else _parse_gpu(gpu, f"{field}.gpu"),
        )

    def to_proto(self) -> ResourcesProto:
        return ResourcesProto(
            cpu_millis=self.cpu_millis, memory_bytes=self.memory_bytes, gpus=self.gpus
        )


def parse_cpu(value: float | str, field: str) -> int:
    """Cores (``2``, ``0.5``, ``"1.5"``) or millicores (``"500m"``) -> millicores."""
    if isinstance(value, bool):
        raise InvalidArgumentError(field, f"expected cores like 2 or '500m', got {value!r}")
    if isinstance(value, str) and value.strip().endswith("m"):
        millis = _decimal(value.strip()[:-1], field, "millicores like '500m'")
    else:
        millis = _decimal(str(value), field, "cores like 2 or '500m'") * 1000
    if millis <= 0 or millis != millis.to_integral_value():
        raise InvalidArgumentError(
            field, f"expected a positive whole number of millicores, got {value!r}"
        )
    return int(millis)


def parse_memory(value: int | str, field: str) -> int:
    """Bytes (``1073741824``) or a quantity (``"4Gi"``, ``"512Mi"``, ``"1G"``) -> bytes."""
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise InvalidArgumentError(field, f"expected bytes or a quantity like '4Gi', got {value!r}")
    if isinstance(value, int):
        number, unit = Decimal(value), ""
    else:
        match = _QUANTITY.match(value)
        if match is None or match["unit"] not in _MEMORY_UNITS:
            units = ", ".join(u for u in _MEMORY_UNITS if u)
            raise InvalidArgumentError(
                field, f"expected a quantity like '4Gi' (units: {units}), got {value!r}"
            )
        number, unit = Decimal(match["number"]), match["unit"]
    size = number * _MEMORY_UNITS[unit]
    if size <= 0 or size != size.to_integral_value():
        raise InvalidArgumentError(
            field, f"expected a positive whole number of bytes, got {value!r}"
        )
    return int(size)


def _parse_gpu(value: int, field: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidArgumentError(field, f"expected a whole number of GPUs >= 0, got {value!r}")
    return value


def _decimal(text: str, field: str, expected: str) -> Decimal:
    try:
        number = Decimal(text)
    except InvalidOperation:
        raise InvalidArgumentError(field, f"expected {expected}, got {text!r}") from None
    if not number.is_finite():
        raise InvalidArgumentError(field, f"expected {expected}, got {text!r}")
    return number

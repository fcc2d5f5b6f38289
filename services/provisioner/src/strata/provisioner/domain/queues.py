"""Queues: the quota, weight and per-user cap each group of attempts is placed under.

A queue's quota bounds what its placements may reserve at once, its weight is
its share of contended capacity against other queues, and the per-user cap
keeps one person's flood from taking the whole queue. Quotas arrive as people
write them for Kubernetes ("500m", "8Gi"), so they are parsed here, exactly,
into the integer amounts placement adds up; anything else is refused naming
the field and what was expected.

The parser is our own rather than ``kubernetes.utils.parse_quantity``: the
domain stays free of the (heavy) Kubernetes client, the arithmetic is exact
integers (a quota of "0.1" CPU is 100 millicores, not a float), and the
errors name the quota field the way the API reports them.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from fractions import Fraction

from strata.provisioner.domain.resources import Resources, cpu, gpus, memory

DEFAULT_QUEUE = "default"
"""The queue attempts go to when they name none; it exists without being applied."""

_NAME = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")

_QUANTITY = re.compile(r"(?P<number>\d+(?:\.\d*)?|\.\d+)(?P<suffix>[a-zA-Z]*)")

_SUFFIXES: dict[str, Fraction] = {
    "": Fraction(1),
    "m": Fraction(1, 1000),
    "k": Fraction(10**3),
    "M": Fraction(10**6),
    "G": Fraction(10**9),
    "T": Fraction(10**12),
    "P": Fraction(10**15),
    "E": Fraction(10**18),
    "Ki": Fraction(2**10),
    "Mi": Fraction(2**20),
    "Gi": Fraction(2**30),
    "Ti": Fraction(2**40),
    "Pi": Fraction(2**50),
    "Ei": Fraction(2**60),
}

QUOTA_RESOURCES = ("cpu", "memory", "gpu")
"""The resource names a quota may limit, as ApplyQueue takes them."""


class QueueError(ValueError):
    """A queue setting that cannot be used; ``field`` names it (``quota.memory``)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@dataclass(frozen=True)
class Quota:
    """Most a queue's placements may reserve at once; ``None``: no limit on that kind."""

    cpu_millis: int | None = None
    memory_bytes: int | None = None
    gpus: int | None = None

    def allows(self, reserved: Resources) -> bool:
        """True when ``reserved`` (the queue's total) stays within every limited kind."""
        return (
            (self.cpu_millis is None or reserved.cpu_millis <= self.cpu_millis)
            and (self.memory_bytes is None or reserved.memory_bytes <= self.memory_bytes)
            and (self.gpus is None or reserved.gpus <= self.gpus)
        )

    def as_resources(self) -> Resources | None:
        """The quota as amounts, unlimited kinds as 0; ``None`` when nothing is limited."""
        if self.unlimited:
            return None
        return Resources(self.cpu_millis or 0, self.memory_bytes or 0, self.gpus or 0)

    def as_quantities(self) -> dict[str, str]:
        """The limited kinds as Kubernetes quantities, as ApplyQueue takes them back:
        ``{"cpu": "500m", "memory": "8Gi"}``; an unlimited kind is left out."""
        quantities = {}
        if self.cpu_millis is not None:
            whole, millis = divmod(self.cpu_millis, 1000)
            quantities["cpu"] = f"{self.cpu_millis}m" if millis else str(whole)
        if self.memory_bytes is not None:
            quantities["memory"] = _binary_quantity(self.memory_bytes)
        if self.gpus is not None:
            quantities["gpu"] = str(self.gpus)
        return quantities

    @property
    def unlimited(self) -> bool:
        return self.cpu_millis is None and self.memory_bytes is None and self.gpus is None

    def __str__(self) -> str:
        parts = []
        if self.cpu_millis is not None:
            parts.append(cpu(self.cpu_millis))
        if self.memory_bytes is not None:
            parts.append(f"{memory(self.memory_bytes)} memory")
        if self.gpus is not None:
            parts.append(gpus(self.gpus))
        return ", ".join(parts) if parts else "no limit"


@dataclass(frozen=True)
class QueuePolicy:
    """How one queue's attempts are placed: quota, share under contention, per-user cap."""

    name: str
    quota: Quota = Quota()
    weight: float = 1.0
    max_running_per_user: int = 0
    """Most attempts one user may have placed or running in the queue; 0: no cap."""

    def __post_init__(self) -> None:
        if not (math.isfinite(self.weight) and self.weight > 0):
            raise QueueError("weight", f"{self.weight!r} is not a weight: expected a number > 0")
        if self.max_running_per_user < 0:
            raise QueueError(
                "max_running_per_user",
                f"{self.max_running_per_user} is negative: expected 0 (no cap) or more",
            )


def queue_policy(
    name: str, quota: Mapping[str, str], weight: float, max_running_per_user: int
) -> QueuePolicy:
    """A queue as ApplyQueue asks for it, every field checked (``QueueError`` otherwise).

    A weight of 0 is the proto's "unset" and means 1.
    """
    if not _NAME.fullmatch(name):
        raise QueueError(
            "name",
            f"{name!r} is not a queue name: expected lowercase letters, digits and dashes, "
            "starting and ending with a letter or digit, at most 63 characters",
        )
    return QueuePolicy(
        name=name,
        quota=parse_quota(quota),
        weight=1.0 if weight == 0 else weight,
        max_running_per_user=max_running_per_user,
    )


def parse_quota(quota: Mapping[str, str]) -> Quota:
    """Read ``{"cpu": "500m", "memory": "8Gi", "gpu": "1"}``; a kind left out has no limit."""
    amounts: dict[str, int] = {}
    for key, text in quota.items():
        field = f"quota.{key}"
        if key not in QUOTA_RESOURCES:
            raise QueueError(
                field, f"unknown resource {key!r}: expected one of {', '.join(QUOTA_RESOURCES)}"
            )
        amount = _quantity(field, text)
        if key == "cpu":
            amounts[key] = _whole(field, text, amount * 1000, "a whole number of millicores (1m)")
        elif key == "memory":
            amounts[key] = _whole(field, text, amount, "a whole number of bytes")
        else:
            amounts[key] = _whole(field, text, amount, "a whole number of GPUs")
    return Quota(amounts.get("cpu"), amounts.get("memory"), amounts.get("gpu"))


def _quantity(field: str, text: str) -> Fraction:
    """A Kubernetes quantity ("2", "500m", "1.5Gi", "1G") as an exact number."""
    stripped = text.strip()
    if stripped.startswith("-"):
        raise QueueError(field, f"{text!r} is negative: expected an amount of 0 or more")
    match = _QUANTITY.fullmatch(stripped.removeprefix("+"))
    if match is None or match["suffix"] not in _SUFFIXES:
        raise QueueError(
            field,
            f"{text!r} is not a quantity: expected a number with an optional suffix "
            '(m, k, M, G, T, Ki, Mi, Gi, Ti), e.g. "500m", "2", "8Gi"',
        )
    return Fraction(match["number"]) * _SUFFIXES[match["suffix"]]


def _whole(field: str, text: str, amount: Fraction, expected: str) -> int:
    if amount.denominator != 1:
        raise QueueError(field, f"{text!r} is too fine: expected {expected}")
    return int(amount)


def _binary_quantity(amount: int) -> str:
    """``amount`` bytes in the largest binary suffix that states it exactly."""
    for suffix in ("Ei", "Pi", "Ti", "Gi", "Mi", "Ki"):
        unit = int(_SUFFIXES[suffix])
        if amount and amount % unit == 0:
            return f"{amount // unit}{suffix}"
    return str(amount)

"""How a task's attempts are retried: count, first wait, growth, cap."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from google.protobuf.duration_pb2 import Duration

from strata.api.scheduler.v1.scheduler_pb2 import RetryPolicy
from strata.core.errors import InvalidArgumentError


@dataclass(frozen=True)
class Retry:
    """Up to ``attempts`` attempts in total; the wait before the second is ``backoff``,
    then grows by ``multiplier`` after each attempt, never past ``max_backoff``.
    """

    attempts: int = 1
    backoff: timedelta = timedelta(seconds=1)
    multiplier: float = 2.0
    max_backoff: timedelta = timedelta(minutes=10)

    def to_proto(self, field: str) -> RetryPolicy:
        """The proto; a nonsensical policy is an InvalidArgumentError under ``field``."""
        if self.attempts < 1:
            raise InvalidArgumentError(
                f"{field}.attempts", f"expected at least 1 attempt, got {self.attempts}"
            )
        if self.backoff < timedelta(0):
            raise InvalidArgumentError(
                f"{field}.backoff", f"must not be negative, got {self.backoff}"
            )
        if self.multiplier < 1:
            raise InvalidArgumentError(
                f"{field}.multiplier", f"expected a factor >= 1, got {self.multiplier}"
            )
        if self.max_backoff < self.backoff:
            raise InvalidArgumentError(
                f"{field}.max_backoff",
                f"must be at least the first backoff {self.backoff}, got {self.max_backoff}",
            )
        return RetryPolicy(
            max_attempts=self.attempts,
            initial_backoff=duration(self.backoff),
            backoff_multiplier=self.multiplier,
            max_backoff=duration(self.max_backoff),
        )


def duration(value: timedelta) -> Duration:
    message = Duration()
    message.FromTimedelta(value)
    return message

"""The errors every Strata component raises, independent of transport.

The gRPC edge maps each class to one status code (``strata.core.grpc``); the bus
maps them to retry-or-dead-letter. Domain code raises these and never imports grpc.
"""

from __future__ import annotations


class StrataError(Exception):
    """Base of every error Strata raises on purpose."""


class ConfigError(StrataError):
    """A setting is missing or has the wrong type; the process refuses to start."""


class UnreachableError(StrataError):
    """A server the process depends on did not answer.

    ``str()`` is one line naming the component and its address, meant to be printed
    as is instead of a stack trace.
    """

    def __init__(self, component: str, address: str, reason: str) -> None:
        super().__init__(f"{component} is not reachable at {address}: {reason}")
        self.component = component
        self.address = address
        self.reason = reason

"""The errors every Strata component raises, independent of transport.

The gRPC edge maps each class to one status code (``strata.core.rpc.status``); the bus
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


class PermanentError(StrataError):
    """Processing this input can never succeed, so retrying it is pointless.

    An event handler raises it (or a subclass) to send the event straight to the
    dead-letter topic; any other exception counts as transient and is retried first.
    """


class InvalidArgumentError(PermanentError):
    """A request or event has a missing or malformed field; ``field`` names it.

    ``field`` is the path a caller would write, e.g. ``workflow.steps[2].image``.
    """

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"invalid {field}: {message}")
        self.field = field
        self.message = message


class NotFoundError(StrataError):
    """The thing asked for does not exist; ``what`` says which, e.g. ``model 'churn'``."""

    def __init__(self, what: str) -> None:
        super().__init__(f"{what} not found")
        self.what = what


class AlreadyExistsError(StrataError):
    """Creating something that exists already, e.g. a model version registered twice."""


class FailedPreconditionError(StrataError):
    """The system is not in a state where this request can run, e.g. cancelling a finished run."""


class UnauthenticatedError(StrataError):
    """The caller did not prove who it is: no bearer token, or one nobody issued."""


class PermissionDeniedError(StrataError):
    """The caller is known but none of its roles allows this request."""


class UnavailableError(StrataError):
    """Something needed right now is down; the same request may succeed later."""


class DependencyUnavailableError(UnavailableError):
    """A server this work depends on is down or not answering: an outage, not bad input.

    An event handler raises it (``raise DependencyUnavailableError(...) from exc``)
    when it finds a dependency down in a way the bus would not recognise by itself;
    the bus then pauses the event's partition and retries the event until the
    dependency is back, instead of dead-lettering it.
    """

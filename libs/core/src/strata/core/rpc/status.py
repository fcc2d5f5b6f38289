"""The one mapping from Strata's domain errors to gRPC status codes, both ways.

Servers never pick a status code by hand: handlers raise the errors of
:mod:`strata.core.errors` and the edge (:mod:`strata.core.rpc.edge`) calls
:func:`abort`. An :class:`~strata.core.errors.InvalidArgumentError` also carries a
``google.rpc.BadRequest`` with the offending field, which clients read back with
:func:`field_violations`.
"""

from __future__ import annotations

from typing import Any

import grpc
from google.protobuf import any_pb2
from google.rpc.code_pb2 import INVALID_ARGUMENT
from google.rpc.error_details_pb2 import BadRequest
from google.rpc.status_pb2 import Status
from grpc_status import rpc_status

from strata.core import errors

_CODES: dict[type[errors.StrataError], grpc.StatusCode] = {
    errors.InvalidArgumentError: grpc.StatusCode.INVALID_ARGUMENT,
    errors.NotFoundError: grpc.StatusCode.NOT_FOUND,
    errors.AlreadyExistsError: grpc.StatusCode.ALREADY_EXISTS,
    errors.FailedPreconditionError: grpc.StatusCode.FAILED_PRECONDITION,
    errors.UnauthenticatedError: grpc.StatusCode.UNAUTHENTICATED,
    errors.PermissionDeniedError: grpc.StatusCode.PERMISSION_DENIED,
    errors.UnavailableError: grpc.StatusCode.UNAVAILABLE,
    errors.UnreachableError: grpc.StatusCode.UNAVAILABLE,
}


def code_of(error: errors.StrataError) -> grpc.StatusCode:
    """The status code for ``error``: its class's, or its nearest mapped base's; else INTERNAL."""
    for cls in type(error).__mro__:
        code = _CODES.get(cls)
        if code is not None:
            return code
    return grpc.StatusCode.INTERNAL


def status_of(error: errors.StrataError) -> Status:
    """The rich ``google.rpc.Status`` for ``error``, with field violations when it has a field."""
    code = code_of(error)
    status = Status(code=code.value[0], message=str(error))
    if isinstance(error, errors.InvalidArgumentError):
        violation = BadRequest.FieldViolation(field=error.field, description=error.message)
        detail = any_pb2.Any()
        detail.Pack(BadRequest(field_violations=[violation]))
        status.details.append(detail)
    return status


async def abort(context: Any, error: errors.StrataError) -> None:
    """End the call on ``context`` (a ``grpc.aio.ServicerContext``) with ``error``'s status."""
    status = rpc_status.to_status(status_of(error))
    await context.abort(status.code, status.details, status.trailing_metadata)


def field_violations(error: grpc.aio.AioRpcError) -> dict[str, str]:
    """Client side: field -> description of an INVALID_ARGUMENT reply (empty when none)."""
    status = rpc_status.from_call(error)
    if status is None or status.code != INVALID_ARGUMENT:
        return {}
    violations: dict[str, str] = {}
    for detail in status.details:
        request = BadRequest()
        if detail.Unpack(request):
            violations.update((v.field, v.description) for v in request.field_violations)
    return violations

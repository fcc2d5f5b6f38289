"""Each domain error reaches a gRPC caller as one status code, the same in every service."""

from __future__ import annotations

import grpc
import pytest
from google.rpc.error_details_pb2 import BadRequest

from strata.core import errors
from strata.core.rpc.status import code_of, status_of


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (
            errors.InvalidArgumentError("run.id", "is empty"),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        (errors.NotFoundError("run 'r1'"), grpc.StatusCode.NOT_FOUND),
        (errors.AlreadyExistsError("model 'churn' v3"), grpc.StatusCode.ALREADY_EXISTS),
        (errors.FailedPreconditionError("run is finished"), grpc.StatusCode.FAILED_PRECONDITION),
        (errors.UnauthenticatedError("no token"), grpc.StatusCode.UNAUTHENTICATED),
        (errors.PermissionDeniedError("not yours"), grpc.StatusCode.PERMISSION_DENIED),
        (errors.UnavailableError("queue full"), grpc.StatusCode.UNAVAILABLE),
        (errors.UnreachableError("Redis", "127.0.0.1:1", "refused"), grpc.StatusCode.UNAVAILABLE),
        (errors.StrataError("anything else on purpose"), grpc.StatusCode.INTERNAL),
    ],
)
def test_each_error_has_one_code(error: errors.StrataError, code: grpc.StatusCode) -> None:
    assert code_of(error) == code


def test_a_subclass_takes_its_nearest_mapped_base() -> None:
    class RunNotFoundError(errors.NotFoundError):
        pass

    assert code_of(RunNotFoundError("run 'r9'")) == grpc.StatusCode.NOT_FOUND


def test_invalid_argument_carries_the_field_in_the_message_and_the_details() -> None:
    status = status_of(errors.InvalidArgumentError("workflow.steps[2].image", "is empty"))
    assert status.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert status.message == "invalid workflow.steps[2].image: is empty"
    bad_request = BadRequest()
    assert status.details[0].Unpack(bad_request)
    assert [(v.field, v.description) for v in bad_request.field_violations] == [
        ("workflow.steps[2].image", "is empty")
    ]


def test_other_errors_carry_no_details() -> None:
    assert not status_of(errors.NotFoundError("model 'churn'")).details

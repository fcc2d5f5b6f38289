"""Who may call a Strata gRPC server, and what a refused or failed call tells the caller.

A real grpc.aio server on a free loopback port serves a tiny service with raw-bytes
methods, behind the same edge every Strata service uses. The service is declared in
the protobuf pool as a generated module would declare it, since role lists are
checked against the declared methods.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import grpc
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, empty_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from strata.core.errors import ConfigError, InvalidArgumentError, NotFoundError
from strata.core.rpc import RpcServer, Service, channel, current_principal, field_violations
from strata.core.rpc.auth import TokenBook, check_auth_settings
from strata.core.rpc.client import DEFAULT_DEADLINE
from strata.core.settings import DEV_ADMIN_TOKEN, AuthSettings

SERVICE = "strata.test.v1.Echo"
TOKENS = {
    "reader-token": {"principal": "ana", "roles": ["reader"]},
    "admin-token": {"principal": "root", "roles": ["admin"]},
}


async def whoami(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    return current_principal().name.encode()


async def count(request: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
    for n in range(3):
        yield f"{current_principal().name}:{n}".encode()


async def validate(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    raise InvalidArgumentError("order.quantity", "must be positive, got -1")


async def find(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    raise NotFoundError(f"model {request.decode()!r}")


async def crash(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    raise RuntimeError("secret-internal-detail")


async def hang(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    await asyncio.Event().wait()
    return b""


def _add_echo(server: grpc.aio.Server) -> None:
    unary = grpc.unary_unary_rpc_method_handler
    methods = {
        "WhoAmI": unary(whoami),
        "Count": grpc.unary_stream_rpc_method_handler(count),
        "Validate": unary(validate),
        "Find": unary(find),
        "Crash": unary(crash),
        "Hang": unary(hang),
        "Shutdown": unary(whoami),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, methods),))


def _declare_echo() -> None:
    """Add the Echo service to the protobuf pool, as a generated ``_pb2`` module does."""
    package, _, name = SERVICE.rpartition(".")
    empty = f".{empty_pb2.Empty.DESCRIPTOR.full_name}"
    proto = descriptor_pb2.FileDescriptorProto(
        name="strata/test/v1/echo.proto",
        package=package,
        dependency=[empty_pb2.DESCRIPTOR.name],
        syntax="proto3",
    )
    service = proto.service.add(name=name)
    for method in ("WhoAmI", "Count", "Validate", "Find", "Crash", "Hang", "Shutdown"):
        service.method.add(name=method, input_type=empty, output_type=empty)
    descriptor_pool.Default().AddSerializedFile(proto.SerializeToString())


_declare_echo()
ECHO = Service(
    name=SERVICE,
    add=_add_echo,
    roles={m: ["reader"] for m in ("WhoAmI", "Count", "Validate", "Find", "Crash", "Hang")},
)  # "Shutdown" is listed for nobody: admin only


async def _serve(auth: AuthSettings, *, reflection: bool = False) -> tuple[RpcServer, str]:
    server = RpcServer([ECHO], auth, reflection=reflection)
    port = await server.start("127.0.0.1", 0)
    await server.set_serving(True)
    return server, f"127.0.0.1:{port}"


@pytest.fixture(scope="module")
async def target() -> AsyncIterator[str]:
    server, address = await _serve(AuthSettings(enabled=True, tokens=TOKENS))
    yield address
    await server.stop(0)


Dial = Callable[..., grpc.aio.Channel]
"""Opens a Strata channel to the test server that sends the given token."""


@pytest.fixture
def dial(target: str) -> Dial:
    def open_as(token: str, deadline: float = DEFAULT_DEADLINE) -> grpc.aio.Channel:
        return channel(target, AuthSettings(client_token=token), deadline=deadline)

    return open_as


async def _call(ch: grpc.aio.Channel, method: str, request: bytes = b"") -> bytes:
    async with ch:
        response: bytes = await ch.unary_unary(f"/{SERVICE}/{method}")(request)
        return response


async def _refusal(ch: grpc.aio.Channel, method: str, request: bytes = b"") -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _call(ch, method, request)
    return caught.value


async def test_a_call_without_a_token_is_unauthenticated(target: str) -> None:
    error = await _refusal(grpc.aio.insecure_channel(target), "WhoAmI")
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "bearer token" in (error.details() or "")


async def test_an_unknown_token_is_unauthenticated(dial: Dial) -> None:
    error = await _refusal(dial("forged-token"), "WhoAmI")
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_a_token_in_another_scheme_is_unauthenticated(target: str) -> None:
    async with grpc.aio.insecure_channel(target) as ch:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await ch.unary_unary(f"/{SERVICE}/WhoAmI")(
                b"", metadata=(("authorization", "Basic reader-token"),)
            )
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_a_known_token_without_the_role_is_permission_denied(dial: Dial) -> None:
    error = await _refusal(dial("reader-token"), "Shutdown")
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "'ana'" in (error.details() or "")


async def test_the_right_role_passes_and_the_handler_sees_the_principal(dial: Dial) -> None:
    assert await _call(dial("reader-token"), "WhoAmI") == b"ana"


async def test_admin_may_call_every_method(dial: Dial) -> None:
    assert await _call(dial("admin-token"), "WhoAmI") == b"root"
    assert await _call(dial("admin-token"), "Shutdown") == b"root"


async def test_a_response_stream_is_guarded_like_a_unary_call(dial: Dial, target: str) -> None:
    async with dial("reader-token") as ch:
        replies = [r async for r in ch.unary_stream(f"/{SERVICE}/Count")(b"")]
    assert replies == [b"ana:0", b"ana:1", b"ana:2"]
    async with grpc.aio.insecure_channel(target) as anonymous:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            _ = [r async for r in anonymous.unary_stream(f"/{SERVICE}/Count")(b"")]
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_health_answers_without_a_token(target: str) -> None:
    async with grpc.aio.insecure_channel(target) as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        reply = await stub.Check(health_pb2.HealthCheckRequest(service=SERVICE))
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


async def _listed_services(target: str) -> set[str]:
    async with grpc.aio.insecure_channel(target) as ch:
        stub = reflection_pb2_grpc.ServerReflectionStub(ch)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        replies = [r async for r in stub.ServerReflectionInfo(iter([request]))]
    return {s.name for s in replies[0].list_services_response.service}


async def test_reflection_when_asked_answers_without_a_token() -> None:
    server, address = await _serve(AuthSettings(tokens=TOKENS), reflection=True)
    try:
        assert {SERVICE, "grpc.health.v1.Health"} <= await _listed_services(address)
    finally:
        await server.stop(0)


async def test_reflection_is_off_unless_asked(target: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _listed_services(target)
    assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED


async def test_invalid_argument_names_the_field(dial: Dial) -> None:
    error = await _refusal(dial("reader-token"), "Validate")
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "order.quantity" in (error.details() or "")
    assert field_violations(error) == {"order.quantity": "must be positive, got -1"}


async def test_not_found_says_what(dial: Dial) -> None:
    error = await _refusal(dial("reader-token"), "Find", b"churn")
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert error.details() == "model 'churn' not found"
    assert field_violations(error) == {}


async def test_an_unexpected_error_is_internal_and_keeps_its_detail_inside(dial: Dial) -> None:
    error = await _refusal(dial("reader-token"), "Crash")
    assert error.code() == grpc.StatusCode.INTERNAL
    assert "secret-internal-detail" not in (error.details() or "")


async def test_a_unary_call_without_a_timeout_gets_the_channel_deadline(dial: Dial) -> None:
    error = await _refusal(dial("reader-token", deadline=0.2), "Hang")
    assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED


async def test_with_auth_disabled_anyone_may_call() -> None:
    server, address = await _serve(AuthSettings(enabled=False))
    try:
        assert await _call(grpc.aio.insecure_channel(address), "Shutdown") == b"anonymous"
    finally:
        await server.stop(0)


def test_a_token_entry_without_principal_is_named_by_position_not_by_token() -> None:
    settings = AuthSettings(tokens={"t0ps3cret": {"roles": ["reader"]}})
    with pytest.raises(ConfigError) as caught:
        TokenBook.from_settings(settings)
    assert "STRATA_AUTH_TOKENS" in str(caught.value)
    assert "entry 1" in str(caught.value)
    assert "t0ps3cret" not in str(caught.value)


@pytest.fixture
def no_auth_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings built here see only their arguments, not the test environment's tokens."""
    for name in ("STRATA_AUTH_ENABLED", "STRATA_AUTH_TOKENS", "STRATA_AUTH_CLIENT_TOKEN"):
        monkeypatch.delenv(name, raising=False)


@pytest.mark.usefixtures("no_auth_variables")
def test_production_without_tokens_refuses_naming_the_variable_and_its_format() -> None:
    with pytest.raises(ConfigError) as caught:
        check_auth_settings(AuthSettings(), "production")
    message = str(caught.value)
    assert message.startswith("STRATA_AUTH_TOKENS is not set")
    assert '"principal"' in message
    assert "STRATA_MODE=development" in message


def test_production_refuses_the_public_token_even_when_listed_on_purpose() -> None:
    tokens = {**TOKENS, DEV_ADMIN_TOKEN: {"principal": "dev", "roles": ["admin"]}}
    with pytest.raises(ConfigError, match="STRATA_AUTH_TOKENS holds the public local-stack token"):
        check_auth_settings(AuthSettings(tokens=tokens), "production")


def test_production_refuses_disabled_auth() -> None:
    with pytest.raises(ConfigError, match="STRATA_AUTH_ENABLED=false"):
        check_auth_settings(AuthSettings(enabled=False, tokens=TOKENS), "production")


def test_production_accepts_issued_tokens() -> None:
    check_auth_settings(AuthSettings(tokens=TOKENS), "production")


@pytest.mark.usefixtures("no_auth_variables")
def test_development_accepts_the_local_stack_defaults() -> None:
    check_auth_settings(AuthSettings(), "development")
    check_auth_settings(AuthSettings(enabled=False), "development")


def test_a_malformed_token_entry_is_refused_in_development_too() -> None:
    with pytest.raises(ConfigError, match="entry 1"):
        check_auth_settings(AuthSettings(tokens={"t": {"roles": ["x"]}}), "development")


@pytest.mark.usefixtures("no_auth_variables")
def test_a_production_client_without_a_token_refuses_to_send_the_public_one(target: str) -> None:
    with pytest.raises(ConfigError) as caught:
        channel(target, AuthSettings())
    assert str(caught.value).startswith("STRATA_AUTH_CLIENT_TOKEN is not set")
    with pytest.raises(ConfigError, match="STRATA_AUTH_CLIENT_TOKEN holds the public"):
        channel(target, AuthSettings(client_token=DEV_ADMIN_TOKEN))


@pytest.mark.usefixtures("no_auth_variables")
async def test_a_development_client_sends_the_local_stack_token() -> None:
    tokens = {DEV_ADMIN_TOKEN: {"principal": "dev", "roles": ["admin"]}}
    server, address = await _serve(AuthSettings(tokens=tokens))
    try:
        assert await _call(channel(address, AuthSettings(), mode="development"), "WhoAmI") == b"dev"
    finally:
        await server.stop(0)

"""Who is calling, and may they: bearer tokens mapped to a principal and its roles.

The tokens come from :class:`~strata.core.settings.AuthSettings` (``STRATA_AUTH_TOKENS``).
A method is open to the roles its service lists for it (:class:`AccessPolicy`);
the ``admin`` role may call everything, and a method nobody listed is admin-only,
so a forgotten entry fails closed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass

from strata.core.errors import ConfigError, PermissionDeniedError, UnauthenticatedError
from strata.core.settings import AuthSettings

ADMIN_ROLE = "admin"
"""The role that may call every method."""

OPEN_SERVICES = (
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1.ServerReflection/",
    "/grpc.reflection.v1alpha.ServerReflection/",
)
"""Method prefixes that need no token: probes and tools must work before anyone logs in."""


@dataclass(frozen=True)
class Principal:
    """The caller of one gRPC call, as its bearer token identifies it."""

    name: str
    roles: frozenset[str]

    def may(self, roles: Iterable[str]) -> bool:
        """Whether any of ``roles`` is one of ours (``admin`` may do everything)."""
        return ADMIN_ROLE in self.roles or not self.roles.isdisjoint(roles)


ANONYMOUS = Principal("anonymous", frozenset({ADMIN_ROLE}))
"""Every caller when auth is disabled (local experiments only)."""

_current: ContextVar[Principal | None] = ContextVar("strata_principal", default=None)


def current_principal() -> Principal:
    """The principal of the gRPC call being handled; only valid inside a handler."""
    principal = _current.get()
    if principal is None:
        raise UnauthenticatedError("no principal: not inside an authenticated gRPC call")
    return principal


def act_as(principal: Principal) -> None:
    """Make ``principal`` the caller for the rest of this task (one task serves one call)."""
    _current.set(principal)


class TokenBook:
    """The issued tokens; a token is looked up by its SHA-256 so no comparison leaks timing."""

    def __init__(self, grants: Mapping[str, Principal]) -> None:
        self._by_digest = {_digest(token): principal for token, principal in grants.items()}

    @classmethod
    def from_settings(cls, settings: AuthSettings) -> TokenBook:
        """Read ``STRATA_AUTH_TOKENS``; a malformed entry is named by position, never by token."""
        grants = {}
        for position, (token, entry) in enumerate(settings.tokens.items(), start=1):
            grants[token] = _principal_of(entry, position)
        return cls(grants)

    def principal_of(self, token: str) -> Principal | None:
        return self._by_digest.get(_digest(token))


class AccessPolicy:
    """Which roles may call each method; keys are ``/pkg.Service/Method`` or ``/pkg.Service/*``."""

    def __init__(self, rules: Mapping[str, Iterable[str]]) -> None:
        self._rules = {key: frozenset(roles) for key, roles in rules.items()}

    def roles_for(self, method: str) -> frozenset[str]:
        """The roles allowed on ``method``; none listed means admin only."""
        service = method.rsplit("/", 1)[0]
        return self._rules.get(method, self._rules.get(f"{service}/*", frozenset()))


class Gatekeeper:
    """Decides the principal of a call from its metadata, or refuses it."""

    def __init__(self, book: TokenBook | None, policy: AccessPolicy) -> None:
        """``book=None`` means auth is disabled: every caller is :data:`ANONYMOUS`."""
        self._book = book
        self._policy = policy

    def admit(self, method: str, metadata: Iterable[tuple[str, str | bytes]]) -> Principal:
        """The caller of ``method``; raises Unauthenticated- or PermissionDeniedError."""
        if self._book is None:
            return ANONYMOUS
        principal = self._book.principal_of(_bearer_token(metadata))
        if principal is None:
            raise UnauthenticatedError("unknown bearer token")
        roles = self._policy.roles_for(method)
        if not principal.may(roles):
            needed = ", ".join(sorted(roles | {ADMIN_ROLE}))
            raise PermissionDeniedError(
                f"principal {principal.name!r} may not call {method}: it needs one of: {needed}"
            )
        return principal


def is_open(method: str) -> bool:
    """Whether ``method`` is served without a token (health and reflection)."""
    return method.startswith(OPEN_SERVICES)


def _bearer_token(metadata: Iterable[tuple[str, str | bytes]]) -> str:
    for key, value in metadata:
        if key == "authorization" and isinstance(value, str):
            scheme, _, token = value.partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
            raise UnauthenticatedError("malformed authorization metadata: want 'Bearer <token>'")
    raise UnauthenticatedError(
        "missing bearer token: send metadata 'authorization: Bearer <token>'"
    )


def _principal_of(entry: Mapping[str, str | list[str]], position: int) -> Principal:
    name = entry.get("principal")
    roles = entry.get("roles", [])
    if not isinstance(name, str) or not name:
        raise ConfigError(f"STRATA_AUTH_TOKENS: entry {position} needs a 'principal' string")
    if isinstance(roles, str):
        roles = [roles]
    return Principal(name, frozenset(roles))


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()

"""Who is calling, and may they: bearer tokens mapped to a principal and its roles.

The tokens come from :class:`~strata.core.settings.AuthSettings` (``STRATA_AUTH_TOKENS``).
A method is open to the roles its service lists for it (:class:`AccessPolicy`);
the ``admin`` role may call everything, and a method nobody listed is admin-only,
so a forgotten entry fails closed. The local stack's public token and disabled auth
are development conveniences that :func:`check_auth_settings` refuses in production.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass

from strata.core.errors import ConfigError, PermissionDeniedError, UnauthenticatedError
from strata.core.settings import DEV_ADMIN_TOKEN, AuthSettings, Mode

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
    """The issued tokens; a token is looked up by its SHA-256 so no comparison leaks timing.

    A token once found is kept by its text too, so the calls that follow skip the
    digest. Only issued tokens are kept (at most one entry each, whatever callers
    send), and a dict finds a text by its hash, randomised per process, before it
    compares any characters: a wrong token is still answered by the digest lookup.
    """

    def __init__(self, grants: Mapping[str, Principal]) -> None:
        self._by_digest = {_digest(token): principal for token, principal in grants.items()}
        self._found: dict[str, Principal] = {}

    @classmethod
    def from_settings(cls, settings: AuthSettings) -> TokenBook:
        """Read ``STRATA_AUTH_TOKENS``; a malformed entry is named by position, never by token."""
        grants = {}
        for position, (token, entry) in enumerate(settings.tokens.items(), start=1):
            grants[token] = _principal_of(entry, position)
        return cls(grants)

    def principal_of(self, token: str) -> Principal | None:
        principal = self._found.get(token)
        if principal is None:
            principal = self._by_digest.get(_digest(token))
            if principal is not None:
                self._found[token] = principal
        return principal


def check_auth_settings(auth: AuthSettings, mode: Mode) -> None:
    """Refuse, before anything starts, auth settings that are only safe on a developer's machine.

    In production the public local-stack token, disabled auth and an unset
    ``STRATA_AUTH_TOKENS`` (whose default is that token) are errors naming the
    variable; in development they pass, and the server warns about them. Either way
    a malformed token entry is refused.
    """
    TokenBook.from_settings(auth)
    if mode == "development":
        return
    if not auth.enabled:
        raise ConfigError(
            "STRATA_AUTH_ENABLED=false makes every caller admin: "
            f"set it to true, or {_DEVELOPMENT_ONLY}"
        )
    if "tokens" not in auth.model_fields_set:
        raise ConfigError(
            "STRATA_AUTH_TOKENS is not set: set it to the issued tokens as JSON, "
            f"{_TOKENS_EXAMPLE}; {_DEVELOPMENT_ONLY}"
        )
    if DEV_ADMIN_TOKEN in auth.tokens:
        raise ConfigError(
            f"STRATA_AUTH_TOKENS holds the public local-stack token: remove it; {_DEVELOPMENT_ONLY}"
        )


def client_token(auth: AuthSettings, mode: Mode) -> str:
    """The token a client sends: never the public local-stack one outside development."""
    token = auth.client_token.get_secret_value()
    if mode == "development" or token != DEV_ADMIN_TOKEN:
        return token
    problem = "holds" if "client_token" in auth.model_fields_set else "is not set, so it would send"
    raise ConfigError(
        f"STRATA_AUTH_CLIENT_TOKEN {problem} the public local-stack token: set it to a token "
        f"the server lists in its STRATA_AUTH_TOKENS; {_DEVELOPMENT_ONLY}"
    )


_METHODS_KEPT = 4096
"""Methods whose roles :class:`AccessPolicy` keeps worked out (a server has far fewer)."""

_DEVELOPMENT_ONLY = "the local-stack defaults are accepted only with STRATA_MODE=development"
_TOKENS_EXAMPLE = '{"<token>": {"principal": "<who>", "roles": ["<role>"]}}'


class AccessPolicy:
    """Which roles may call each method; keys are ``/pkg.Service/Method`` or ``/pkg.Service/*``."""

    def __init__(self, rules: Mapping[str, Iterable[str]]) -> None:
        self._rules = {key: frozenset(roles) for key, roles in rules.items()}
        self._by_method: dict[str, frozenset[str]] = {}

    def roles_for(self, method: str) -> frozenset[str]:
        """The roles allowed on ``method``; none listed means admin only."""
        roles = self._by_method.get(method)
        if roles is None:
            service = method.rsplit("/", 1)[0]
            roles = self._rules.get(method, self._rules.get(f"{service}/*", frozenset()))
            if len(self._by_method) < _METHODS_KEPT:  # callers may name any method
                self._by_method[method] = roles
        return roles


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

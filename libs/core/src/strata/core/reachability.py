"""Turn a failed first contact with a server into one readable line.

Every ``ping`` in :mod:`strata.core` runs its probe through :func:`probe`, so a
server that is down, slow or refusing us reads the same way for all of them:
``Kafka is not reachable at 127.0.0.1:19092: connection refused``, with no stack
trace, whatever the client library raised.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable

from strata.core.errors import UnreachableError

_MAX_REASON = 200


async def probe(
    component: str,
    address: str,
    attempt: Callable[[], Awaitable[object]],
    within: float,
    failures: tuple[type[BaseException], ...],
) -> None:
    """Run ``attempt`` for at most ``within`` seconds; a failure becomes an UnreachableError.

    Only ``failures`` (the client library's errors and OSError) are translated, so a
    bug in the caller still shows its traceback instead of posing as a network fault.
    """
    if within <= 0:
        raise ValueError(f"timeout must be positive, got {within!r}")
    try:
        async with asyncio.timeout(within):
            await attempt()
    except TimeoutError:
        raise UnreachableError(component, address, f"no answer within {within:g} s") from None
    except UnreachableError:
        raise
    except failures as exc:
        raise UnreachableError(component, address, reason_of(exc)) from None


def reason_of(exc: BaseException) -> str:
    """A short, single-line reason for ``exc``, e.g. ``connection refused``.

    Client libraries wrap socket errors in their own; the operating system's
    wording of the innermost one is the clearest.
    """
    errno = _socket_errno(exc)
    if errno is not None:
        return os.strerror(errno).lower()
    text = " ".join(str(exc).split()) or type(exc).__name__
    if len(text) > _MAX_REASON:
        text = text[: _MAX_REASON - 1] + "…"
    return text


def _socket_errno(exc: BaseException | None) -> int | None:
    seen = 0
    while exc is not None and seen < 10:  # cause chains are short; cycles are not ours
        if isinstance(exc, OSError) and exc.errno is not None:
            return exc.errno
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return None

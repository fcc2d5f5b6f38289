"""Who may read a feature view.

A view's ``allowed_groups`` are matched against the caller's groups, which are the
roles its bearer token grants (the only group membership Strata's auth model
knows). An empty list opens the view to every authenticated caller; ``admin``
reads everything, as it may call every method.
"""

from __future__ import annotations

from collections.abc import Collection

from strata.core.errors import PermissionDeniedError
from strata.core.rpc.auth import ADMIN_ROLE


def may_read(allowed_groups: Collection[str], groups: Collection[str]) -> bool:
    """Whether a caller in ``groups`` may read a view restricted to ``allowed_groups``."""
    if not allowed_groups or ADMIN_ROLE in groups:
        return True
    return not set(allowed_groups).isdisjoint(groups)


def check_read(view: str, allowed_groups: Collection[str], groups: Collection[str]) -> None:
    """Raise PermissionDeniedError naming the view unless a caller in ``groups`` may read it."""
    if not may_read(allowed_groups, groups):
        raise PermissionDeniedError(
            f"feature view {view!r} is readable by the groups {', '.join(sorted(allowed_groups))} "
            "only, and the caller is in none of them"
        )

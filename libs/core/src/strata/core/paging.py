"""Pages of a list: the page size asked for, and an opaque page token.

Every List RPC pages the same way (protos/README.md: ``page_size`` / ``page_token``
/ ``next_page_token``). The token is the position the previous page ended at,
base64url-encoded so clients treat it as opaque and it can change shape later
without breaking them.
"""

from __future__ import annotations

import base64
import binascii

from strata.core.errors import InvalidArgumentError

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000


def page_size(asked: int) -> int:
    """The page size for ``asked``: 0 is the default, more than the maximum is the maximum."""
    if asked < 0:
        raise InvalidArgumentError("page_size", f"must be 0 (default) or more, got {asked}")
    return min(asked or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)


def token_of(position: str) -> str:
    """The token of a page that ended at ``position`` (e.g. the last name on it)."""
    return base64.urlsafe_b64encode(position.encode()).decode()


def position_after(token: str) -> str:
    """The position a page starts after; "" for the first page."""
    if not token:
        return ""
    try:
        return base64.urlsafe_b64decode(token.encode()).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise InvalidArgumentError(
            "page_token", "is not a token this server returned (next_page_token)"
        ) from None

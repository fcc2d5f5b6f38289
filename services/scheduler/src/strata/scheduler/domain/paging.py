"""Pages of a list ordered by name (workflows) or newest first (runs): the page size
asked for, and an opaque token.

The token is the last name (or creation time and run id) of the previous page,
base64url-encoded so clients treat it as opaque and it can change shape later
without breaking them.
"""

from __future__ import annotations

import base64
import binascii
import uuid
from datetime import datetime

from strata.core.errors import InvalidArgumentError

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000


def page_size(asked: int) -> int:
    """The page size for ``asked``: 0 is the default, more than the maximum is the maximum."""
    if asked < 0:
        raise InvalidArgumentError("page_size", f"must be 0 (default) or more, got {asked}")
    return min(asked or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)


def token_of(last_name: str) -> str:
    return base64.urlsafe_b64encode(last_name.encode()).decode()


def name_after(token: str) -> str:
    """The name a page starts after; "" for the first page."""
    if not token:
        return ""
    try:
        return base64.urlsafe_b64decode(token.encode()).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise InvalidArgumentError(
            "page_token", "is not a token this server returned (next_page_token)"
        ) from None


def run_token(created_at: datetime, run_id: str) -> str:
    """The token of a page of runs ending with the run created at ``created_at``."""
    return token_of(f"{created_at.isoformat()}|{run_id}")


def run_after(token: str) -> tuple[datetime, str] | None:
    """The (created_at, run_id) a page of runs starts after; None for the first page."""
    if not token:
        return None
    created_at, _, run_id = name_after(token).partition("|")
    try:
        return datetime.fromisoformat(created_at), str(uuid.UUID(run_id))
    except ValueError:
        raise InvalidArgumentError(
            "page_token", "is not a token this server returned (next_page_token)"
        ) from None

"""Pages of runs, newest first: the token is the last run's creation time and id.

Lists by name (workflows) use :mod:`strata.core.paging` as it is.
"""

from __future__ import annotations

import uuid
from datetime import datetime

from strata.core.errors import InvalidArgumentError
from strata.core.paging import position_after, token_of


def run_token(created_at: datetime, run_id: str) -> str:
    """The token of a page of runs ending with the run created at ``created_at``."""
    return token_of(f"{created_at.isoformat()}|{run_id}")


def run_after(token: str) -> tuple[datetime, str] | None:
    """The (created_at, run_id) a page of runs starts after; None for the first page."""
    if not token:
        return None
    created_at, _, run_id = position_after(token).partition("|")
    try:
        return datetime.fromisoformat(created_at), str(uuid.UUID(run_id))
    except ValueError:
        raise InvalidArgumentError(
            "page_token", "is not a token this server returned (next_page_token)"
        ) from None

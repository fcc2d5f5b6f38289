"""The streamer's in-memory current view versions against the real Postgres catalog.

What ``GetOnlineFeatures`` relies on: once listening, a view's current version is
served from memory, with no query; a version applied (or a view deleted) by any
process is served (or gone) as soon as the commit's notification arrives, not when
the entry ages out (``max_age`` is an hour here, so only the notification can make
the waits below end); a read that a notification overtook is not kept; and
nothing is kept while not listening. The waits are bounded guards against
hanging, not timing checks.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Collection

import asyncpg
import pytest

from strata.core.migrations import migrate_service
from strata.core.outbox import Outbox
from strata.streamer.current_views import CurrentViews
from strata.streamer.store import StoredView, ViewStore
from strata.transforms.definition import Column, Feature, FeatureView, TopicSource
from strata.transforms.spec import view_to_spec
from strata.transforms.types import ColumnType

pytestmark = pytest.mark.integration

BOUND = 30.0
"""Bound on every wait: a guard against hanging, not a timing check."""
HOUR = 3600.0


class CountedStore(ViewStore):
    """The real store, counting the catalog queries of ``current_of``."""

    def __init__(self, pool: asyncpg.Pool, schema: str) -> None:
        super().__init__(pool, schema, Outbox(schema, "streamer"))
        self.queries = 0
        self.during: Callable[[], Awaitable[None]] | None = None
        """Run once between the query and its answer: a change that overtakes the read."""

    async def current_of(self, names: Collection[str]) -> dict[str, StoredView]:
        self.queries += 1
        found = await super().current_of(names)
        during, self.during = self.during, None
        if during is not None:
            await during()
        return found


async def until(condition: Callable[[], bool]) -> None:
    """Wait (bounded) until ``condition()`` holds."""
    async with asyncio.timeout(BOUND):
        while not condition():  # noqa: ASYNC110 - the conditions are plain state
            await asyncio.sleep(0.01)


@pytest.fixture
async def schema(pool: asyncpg.Pool) -> AsyncIterator[str]:
    name = f"test_views_{uuid.uuid4().hex[:12]}"
    await migrate_service(pool, name, "strata.streamer.migrations")
    yield name
    await pool.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')


@pytest.fixture
async def current(pool: asyncpg.Pool, schema: str) -> AsyncIterator[CurrentViews]:
    """Current views following ``schema``'s catalog, listening before the test starts."""
    views = CurrentViews(max_age=HOUR)
    following = asyncio.create_task(views.follow(pool, schema))
    await until(lambda: views.listening)
    yield views
    following.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await following


def view(name: str, *features: str) -> FeatureView:
    return FeatureView(
        name=name,
        entities=("courier_id",),
        event_time="event_time",
        source=TopicSource(
            f"raw.{name}",
            (
                Column("courier_id", ColumnType.INT64),
                Column("event_time", ColumnType.TIMESTAMP),
                Column("minutes", ColumnType.DOUBLE),
                Column("stops", ColumnType.INT64),
            ),
        ),
        features=tuple(Feature(feature) for feature in features),
    )


async def _until_version(
    current: CurrentViews, store: ViewStore, name: str, version: int | None
) -> None:
    """Wait (bounded) until ``current`` answers ``version`` of ``name`` (None: no view)."""
    async with asyncio.timeout(BOUND):
        while True:
            found = await current.of(store, [name])
            if (found[name].version if name in found else None) == version:
                return
            await asyncio.sleep(0.01)


async def test_a_kept_version_is_served_without_a_query_until_a_new_one_commits(
    pool: asyncpg.Pool, schema: str, current: CurrentViews
) -> None:
    store = CountedStore(pool, schema)
    other = CountedStore(pool, schema)
    name = f"couriers_{uuid.uuid4().hex[:8]}"
    await other.apply(view_to_spec(view(name, "minutes")), applied_by="alice")

    first = await current.of(store, [name])
    again = [await current.of(store, [name]) for _ in range(20)]
    assert first[name].version == 1
    assert all(found[name].version == 1 for found in again)
    assert store.queries == 1, "a kept version is served from memory"

    await other.apply(view_to_spec(view(name, "minutes", "stops")), applied_by="alice")
    await _until_version(current, store, name, 2)
    (served,) = (await current.of(store, [name])).values()
    assert [f.name for f in served.spec.features] == ["minutes", "stops"]

    await other.delete(name, version=2, deleted_by="alice")
    await _until_version(current, store, name, None)


async def test_a_read_overtaken_by_a_new_version_is_not_kept(
    pool: asyncpg.Pool, schema: str, current: CurrentViews
) -> None:
    store = CountedStore(pool, schema)
    other = CountedStore(pool, schema)
    name = f"couriers_{uuid.uuid4().hex[:8]}"
    await other.apply(view_to_spec(view(name, "minutes")), applied_by="alice")

    async def apply_and_wait_for_the_news() -> None:
        heard = current.heard
        await other.apply(view_to_spec(view(name, "minutes", "stops")), applied_by="alice")
        await until(lambda: current.heard > heard)

    store.during = apply_and_wait_for_the_news
    overtaken = await current.of(store, [name])
    assert overtaken[name].version == 1, "the read started before the new version committed"

    answers = [(await current.of(store, [name]))[name].version for _ in range(5)]
    assert answers == [2] * 5, "the overtaken read's version 1 was kept after the news"


async def test_nothing_is_kept_while_not_listening(pool: asyncpg.Pool, schema: str) -> None:
    store = CountedStore(pool, schema)
    name = f"couriers_{uuid.uuid4().hex[:8]}"
    await store.apply(view_to_spec(view(name, "minutes")), applied_by="alice")
    deaf = CurrentViews(max_age=HOUR)

    for _ in range(3):
        assert (await deaf.of(store, [name]))[name].version == 1
    assert store.queries == 3, "without LISTEN a change could be missed, so nothing is kept"

"""Wake-ups between the provisioner's parts: a change wakes whoever waits for it, one
that comes while nobody waits is not lost, and a node's sessions hear only their node."""

from __future__ import annotations

import asyncio

from strata.provisioner.wakeups import Wakeups

FOREVER = 3600.0
"""A poll no test waits out: only a wake-up ends the wait."""
BOUND = 30.0
"""A guard against hanging, not a timing check."""


async def test_a_queue_change_wakes_the_placement_loop_even_if_it_came_first() -> None:
    wakeups = Wakeups()
    waiting = asyncio.ensure_future(wakeups.until_queue_changed(FOREVER))
    await asyncio.sleep(0)
    assert not waiting.done()
    wakeups.queue_changed()
    await asyncio.wait_for(waiting, BOUND)

    # A change while the loop was busy (not waiting) ends its next wait at once.
    wakeups.queue_changed()
    await asyncio.wait_for(wakeups.until_queue_changed(FOREVER), BOUND)
    # Once heard, it does not end the following wait.
    again = asyncio.ensure_future(wakeups.until_queue_changed(FOREVER))
    await asyncio.sleep(0)
    assert not again.done()
    again.cancel()


async def test_the_poll_ends_a_wait_nothing_wakes() -> None:
    await asyncio.wait_for(Wakeups().until_queue_changed(0.01), BOUND)


async def test_a_placement_wakes_every_session_of_its_node_and_no_other() -> None:
    wakeups = Wakeups()
    with (
        wakeups.session("a") as first,
        wakeups.session("a") as second,
        wakeups.session("b") as other,
    ):
        wakeups.placed_on(["a"])
        assert first.is_set()
        assert second.is_set()
        assert not other.is_set()
    # Sessions that ended are forgotten; waking their node is harmless.
    wakeups.placed_on(["a", "b"])
    with wakeups.session("a") as later:
        assert not later.is_set()

"""A worker's stop request: the first reason wins, and the grace is never negative."""

from __future__ import annotations

import asyncio

from strata.agent.domain.outcome import StopKind
from strata.agent.stopping import Stop


async def test_the_first_stop_request_wins() -> None:
    stop = Stop()
    assert not stop.asked
    stop.ask(StopKind.OUT_OF_MEMORY, "over 1 GiB", grace=0)
    stop.ask(StopKind.CANCELLED, "bob cancelled it", grace=10)
    await asyncio.wait_for(stop.wait(), 1)
    assert stop.asked
    assert (stop.kind, stop.message, stop.grace) == (StopKind.OUT_OF_MEMORY, "over 1 GiB", 0)


def test_a_negative_grace_kills_at_once() -> None:
    stop = Stop()
    stop.ask(StopKind.CANCELLED, "now", grace=-5)
    assert stop.grace == 0

"""Adaptive batching: concurrent calls share a run, each gets its own rows, a failing run
fails only its calls, and a lone call runs at once."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Mapping

import numpy as np

from strata.gateway.batching import Batcher
from strata.transforms.featurize import Array, TensorSpec

INPUTS = (TensorSpec("x", "FP32", (-1, 2)),)


class Session:
    """y = 2x; fails on a negative input; the first run waits for ``release``."""

    def __init__(self) -> None:
        self.runs: list[int] = []
        self.release = threading.Event()

    def __call__(self, feeds: Mapping[str, Array]) -> dict[str, Array]:
        x = feeds["x"]
        if not self.runs:
            assert self.release.wait(10), "the test never released the first run"
        self.runs.append(x.shape[0])
        if bool(np.any(np.less(x, 0))):
            raise ValueError("negative input")
        return {"y": x * 2}


def _batcher(session: Session, counts: list[int], **options: float) -> Batcher:
    settings = {"max_rows": 32, "max_wait": 5.0, **options}
    return Batcher(
        session,
        INPUTS,
        max_rows=int(settings["max_rows"]),
        max_wait=settings["max_wait"],
        counted=counts.append,
    )


def _x(*values: float) -> dict[str, Array]:
    return {"x": np.array([[v, v + 0.5] for v in values], dtype=np.float32)}


async def test_calls_arriving_while_a_run_is_in_flight_share_the_next_run() -> None:
    session, counts = Session(), list[int]()
    batcher = _batcher(session, counts)
    first = asyncio.create_task(batcher.run(_x(1.0)))
    await asyncio.sleep(0)  # the first call finds the model idle: it runs at once
    others = [asyncio.create_task(batcher.run(_x(*range(i, i + i)))) for i in (2, 3, 4)]
    await asyncio.sleep(0)
    session.release.set()  # the waiting calls go as soon as the session is free

    answers = await asyncio.wait_for(asyncio.gather(first, *others), 10)

    assert session.runs == [1, 2 + 3 + 4]
    assert counts == [1, 3]
    for feeds, answer in zip(
        [_x(1.0)] + [_x(*range(i, i + i)) for i in (2, 3, 4)], answers, strict=True
    ):
        np.testing.assert_array_equal(answer["y"], feeds["x"] * 2)


async def test_a_failing_run_fails_only_its_calls_and_the_batcher_goes_on() -> None:
    session, counts = Session(), list[int]()
    batcher = _batcher(session, counts)
    first = asyncio.create_task(batcher.run(_x(1.0)))
    await asyncio.sleep(0)
    doomed = [asyncio.create_task(batcher.run(_x(v))) for v in (2.0, -1.0)]
    await asyncio.sleep(0)
    session.release.set()

    results = await asyncio.wait_for(asyncio.gather(first, *doomed, return_exceptions=True), 10)

    np.testing.assert_array_equal(results[0]["y"], _x(1.0)["x"] * 2)  # type: ignore[index]
    assert [str(r) for r in results[1:]] == ["negative input", "negative input"]
    after = await asyncio.wait_for(batcher.run(_x(3.0)), 10)
    np.testing.assert_array_equal(after["y"], _x(3.0)["x"] * 2)


async def test_a_lone_call_does_not_wait_for_company() -> None:
    session, counts = Session(), list[int]()
    session.release.set()
    batcher = _batcher(session, counts, max_wait=3600.0)
    answer = await asyncio.wait_for(batcher.run(_x(1.0)), 10)
    np.testing.assert_array_equal(answer["y"], _x(1.0)["x"] * 2)
    assert counts == [1]


async def test_a_call_as_large_as_a_batch_runs_alone() -> None:
    session, counts = Session(), list[int]()
    session.release.set()
    batcher = _batcher(session, counts, max_rows=2)
    answer = await asyncio.wait_for(batcher.run(_x(1.0, 2.0, 3.0)), 10)
    assert answer["y"].shape == (3, 2)
    assert session.runs == [3]


class Threads:
    """y = 2x, remembering the thread of each run."""

    def __init__(self) -> None:
        self.threads: list[int] = []

    def __call__(self, feeds: Mapping[str, Array]) -> dict[str, Array]:
        self.threads.append(threading.get_ident())
        return {"y": feeds["x"] * 2}


async def test_a_run_within_inline_rows_runs_on_the_loop_and_a_larger_one_in_a_thread() -> None:
    session, counts = Threads(), list[int]()
    batcher = Batcher(
        session, INPUTS, max_rows=32, max_wait=5.0, counted=counts.append, inline_rows=2
    )
    small = await asyncio.wait_for(batcher.run(_x(1.0, 2.0)), 10)
    large = await asyncio.wait_for(batcher.run(_x(1.0, 2.0, 3.0)), 10)
    np.testing.assert_array_equal(small["y"], _x(1.0, 2.0)["x"] * 2)
    np.testing.assert_array_equal(large["y"], _x(1.0, 2.0, 3.0)["x"] * 2)
    loop = threading.get_ident()
    assert session.threads[0] == loop
    assert session.threads[1] != loop
    assert counts == [1, 1]


async def test_without_inline_rows_every_run_goes_to_a_thread() -> None:
    session, counts = Threads(), list[int]()
    batcher = Batcher(session, INPUTS, max_rows=32, max_wait=5.0, counted=counts.append)
    await asyncio.wait_for(batcher.run(_x(1.0)), 10)
    assert session.threads[0] != threading.get_ident()


async def test_a_call_finding_its_model_idle_runs_inline_at_once_without_yielding() -> None:
    session, counts = Threads(), list[int]()
    batcher = Batcher(
        session, INPUTS, max_rows=32, max_wait=3600.0, counted=counts.append, inline_rows=8
    )
    call = batcher.run(_x(1.0))
    # One step of the coroutine finishes it: it never waits for the loop (nor for company).
    try:
        call.send(None)
    except StopIteration as done:
        answer = done.value
    else:
        call.close()
        raise AssertionError("the call yielded to the loop before running")
    np.testing.assert_array_equal(answer["y"], _x(1.0)["x"] * 2)
    assert session.threads == [threading.get_ident()]
    answers = await asyncio.wait_for(
        asyncio.gather(*(batcher.run(_x(float(v))) for v in (2, 3))), 10
    )
    assert counts == [1, 1, 1]  # an inline model is never busy: its calls do not batch
    for v, answer in zip((2, 3), answers, strict=True):
        np.testing.assert_array_equal(answer["y"], _x(float(v))["x"] * 2)

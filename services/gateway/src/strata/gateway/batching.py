"""Adaptive batching: concurrent calls of one model version run as one ONNX Runtime call.

A call that finds its model idle (nothing running, nothing waiting) runs at once:
a lone client pays no wait. A call that arrives while a run is in flight waits for
company, at most ``max_wait`` seconds or until ``max_rows`` rows are waiting; the
waiting calls then run together, their inputs concatenated along the batch (first)
dimension, and each gets back its own rows of every output. Under load the session
sees fewer, larger runs (one Python-to-C++ crossing and one thread hop per batch
instead of per call), which is where the throughput comes from.

Only calls whose inputs agree on everything but the batch dimension share a run,
and only models whose inputs all have a free batch dimension are batched. A run
that fails fails exactly the calls in it, each with the error; an output whose
first dimension is not the batch (a model that reduces over rows) makes the calls
of that run be run again one by one, so nobody gets another caller's rows.

A run of at most ``inline_rows`` rows runs on the event loop itself: for a model that
answers in microseconds, handing the run to a worker thread (submit, wake the
worker, wake the loop again) costs more CPU than the run, and under 8-client load it
was a quarter of the gateway's samples (py-spy, bench/README.md). Larger runs keep
going to a thread, so a slow model never blocks the loop; the caller
(:class:`strata.gateway.models.Served`) sizes ``inline_rows`` from each model's
measured speed. A call that finds its model idle and fits inline runs at once, in
the call itself: no future, no task, no batch. Such a model is never busy when the
next call arrives, so its calls do not batch; waiting for the calls of the same turn
of the loop to share a run served 1.08 calls per run under 8 clients through gRPC
(calls reach the loop one turn apart) and cost about 60 µs of CPU per call
(bench/README.md).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from strata.transforms.featurize import Array, TensorSpec

Run = Callable[[Mapping[str, Array]], dict[str, Array]]
"""A blocking session run: feeds by input name -> outputs by name."""


@dataclass
class _Call:
    feeds: Mapping[str, Array]
    rows: int
    done: asyncio.Future[dict[str, Array]]

    @property
    def signature(self) -> tuple[tuple[str, str, tuple[int, ...]], ...]:
        return tuple(
            (name, str(array.dtype), tuple(array.shape[1:]))
            for name, array in sorted(self.feeds.items())
        )


class Batcher:
    """Batches the calls of one model version; see the module docstring."""

    def __init__(
        self,
        run: Run,
        inputs: Sequence[TensorSpec],
        *,
        max_rows: int,
        max_wait: float,
        counted: Callable[[int], None],
        inline_rows: int = 0,
    ) -> None:
        self._run = run
        self._batchable = all(spec.shape and spec.shape[0] == -1 for spec in inputs)
        self._max_rows = max_rows
        self._max_wait = max_wait
        self._inline_rows = inline_rows
        """Runs of at most this many rows run on the event loop; 0: every run in a thread."""
        self._counted = counted
        """Told the number of calls of each session run, for the batching metrics."""
        self._waiting: list[_Call] = []
        self._rows = 0
        self._running = 0
        self._timer: asyncio.Handle | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def run(self, feeds: Mapping[str, Array]) -> dict[str, Array]:
        """The outputs for ``feeds``, run alone or with other calls."""
        firsts = {array.shape[0] if array.ndim else 0 for array in feeds.values()}
        rows = firsts.pop() if len(firsts) == 1 else 0
        if not self._batchable or rows == 0 or rows >= self._max_rows:
            return await self._alone(feeds, rows)
        if self._running == 0 and not self._waiting and rows <= self._inline_rows:
            return self._now(feeds)
        call = _Call(feeds, rows, asyncio.get_running_loop().create_future())
        self._waiting.append(call)
        self._rows += rows
        if self._running == 0 or self._rows >= self._max_rows:
            self._dispatch()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self._max_wait, self._dispatch)
        return await call.done

    def _now(self, feeds: Mapping[str, Array]) -> dict[str, Array]:
        """Run on the loop, in the caller: the model is idle and the run small."""
        outputs = self._run(feeds)
        self._counted(1)
        return outputs

    async def _alone(self, feeds: Mapping[str, Array], rows: int) -> dict[str, Array]:
        outputs = await self._session(feeds, rows)
        self._counted(1)
        return outputs

    async def _session(self, feeds: Mapping[str, Array], rows: int) -> dict[str, Array]:
        """One session run: on the loop when it is small enough, else in a worker thread."""
        if 0 < rows <= self._inline_rows:
            return self._run(feeds)
        return await asyncio.to_thread(self._run, feeds)

    def _dispatch(self) -> None:
        """Start a run of the waiting calls, grouped by signature, up to ``max_rows`` each."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        waiting, self._waiting, self._rows = self._waiting, [], 0
        groups: dict[tuple[tuple[str, str, tuple[int, ...]], ...], list[_Call]] = {}
        for call in waiting:
            groups.setdefault(call.signature, []).append(call)
        for calls in groups.values():
            batch: list[_Call] = []
            rows = 0
            for call in calls:
                if batch and rows + call.rows > self._max_rows:
                    self._start(batch)
                    batch, rows = [], 0
                batch.append(call)
                rows += call.rows
            self._start(batch)

    def _start(self, calls: list[_Call]) -> None:
        self._running += 1
        task = asyncio.get_running_loop().create_task(self._run_batch(calls))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run_batch(self, calls: list[_Call]) -> None:
        try:
            feeds = {
                name: np.concatenate([call.feeds[name] for call in calls])
                for name in calls[0].feeds
            }
            total = sum(call.rows for call in calls)
            try:
                outputs = await self._session(feeds, total)
            except Exception as error:
                for call in calls:
                    if not call.done.done():
                        call.done.set_exception(error)
                return
            if len(calls) > 1 and any(
                out.ndim == 0 or out.shape[0] != total for out in outputs.values()
            ):
                for call in calls:
                    await self._one_by_one(call)
                return
            self._counted(len(calls))
            start = 0
            for call in calls:
                end = start + call.rows
                if not call.done.done():
                    call.done.set_result({name: out[start:end] for name, out in outputs.items()})
                start = end
        finally:
            self._running -= 1
            if self._waiting and self._running == 0:
                self._dispatch()  # the session is free: waiting longer gains nothing

    async def _one_by_one(self, call: _Call) -> None:
        try:
            outputs = await self._session(call.feeds, call.rows)
        except Exception as error:
            if not call.done.done():
                call.done.set_exception(error)
            return
        self._counted(1)
        if not call.done.done():
            call.done.set_result(outputs)

"""The data plane: the model versions loaded in memory, and which one each alias serves.

A version is an ONNX Runtime session, warmed with one inference before anyone can
reach it. Moving an alias is one dict assignment: a request that already took the
old version finishes on it (it holds the reference), the next one takes the new
version, and no request waits for a load.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cached_property

import onnxruntime as ort

from strata.core.errors import NotFoundError
from strata.gateway.batching import Batcher
from strata.transforms.featurize import DTYPES, Array, FeaturePlan, TensorSpec

_ORT_TYPES = {
    f"tensor({name})": oip
    for oip, name in {
        "BOOL": "bool",
        "UINT8": "uint8",
        "UINT16": "uint16",
        "UINT32": "uint32",
        "UINT64": "uint64",
        "INT8": "int8",
        "INT16": "int16",
        "INT32": "int32",
        "INT64": "int64",
        "FP16": "float16",
        "FP32": "float",
        "FP64": "double",
    }.items()
}
"""ONNX Runtime's type names -> OIP datatypes."""

CHAMPION = "champion"


@dataclass(frozen=True)
class LoadedModel:
    """One version of a model, ready to answer."""

    name: str
    version: int
    sha256: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    session: ort.InferenceSession
    features: FeaturePlan | None = None
    """How Predict fills the inputs from features; None: the version is served by tensors only."""
    row_seconds: float = math.inf
    """The fastest of a few one-row runs timed at load: how long a small run blocks
    whoever runs it (:meth:`Served.run` decides from it what runs on the event loop)."""
    example: Mapping[str, Array] = field(default_factory=dict)
    """Zeros in the shape of one row of each input: what :meth:`Served.warm` runs."""

    def run(self, feeds: Mapping[str, Array]) -> dict[str, Array]:
        """Outputs by name for ``feeds`` (checked by :func:`tensors.decode_inputs`)."""
        names = self.output_names
        return dict(zip(names, self.session.run(names, dict(feeds)), strict=True))

    @cached_property
    def output_names(self) -> list[str]:
        return [spec.name for spec in self.outputs]


def load(name: str, version: int, sha256: str, onnx: bytes, *, threads: int = 1) -> LoadedModel:
    """A session for ``onnx``, warmed with one inference on zeros; blocking (run it in a thread).

    Its signature is read from the session, the authority on what it accepts. A
    model whose tensors Strata cannot serve yet raises ValueError naming the tensor.
    ``threads``: ONNX Runtime's threads for one run (``STRATA_GATEWAY_MODEL_THREADS``).
    Its pool's threads never spin waiting for work: ONNX Runtime's default spin-wait
    burns the cores the event loop and gRPC need between runs.
    """
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    session = ort.InferenceSession(onnx, options, providers=["CPUExecutionProvider"])
    model = LoadedModel(
        name=name,
        version=version,
        sha256=sha256,
        inputs=tuple(_spec(arg) for arg in session.get_inputs()),
        outputs=tuple(_spec(arg) for arg in session.get_outputs()),
        session=session,
    )
    example = {spec.name: spec.example() for spec in model.inputs}
    model.run(example)
    fastest = min(_timed(model, example) for _ in range(5))
    return dataclasses.replace(model, row_seconds=fastest, example=example)


def _timed(model: LoadedModel, feeds: Mapping[str, Array]) -> float:
    started = time.perf_counter()
    model.run(feeds)
    return time.perf_counter() - started


def _spec(arg: ort.NodeArg) -> TensorSpec:
    datatype = _ORT_TYPES.get(arg.type)
    if datatype is None or datatype not in DTYPES:
        raise ValueError(f"tensor {arg.name!r} has type {arg.type}, which is not served yet")
    shape = tuple(d if isinstance(d, int) else -1 for d in arg.shape)
    return TensorSpec(arg.name, datatype, shape)


Counted = Callable[[str, int, int], None]
"""Told (model name, version, calls) after each session run, for the batching metrics."""


class Served:
    """What the gateway answers with: the loaded version behind each (model, alias), and
    the batcher of each loaded version (:mod:`strata.gateway.batching`)."""

    def __init__(
        self,
        wanted: Mapping[str, list[str]],
        *,
        batch_rows: int = 32,
        batch_wait: float = 0.001,
        inline_budget: float = 0.0,
        model_threads: int = 1,
        counted: Counted | None = None,
    ) -> None:
        self.wanted = {name: tuple(aliases) for name, aliases in wanted.items()}
        self._aliases: dict[tuple[str, str], LoadedModel] = {}
        self._batch_rows = batch_rows
        self._batch_wait = batch_wait
        self._inline_budget = inline_budget
        self.model_threads = model_threads
        """ONNX Runtime threads for one run of each model loaded to be served here."""
        self._counted = counted or (lambda _name, _version, _calls: None)
        self._batchers: dict[tuple[str, int, str], Batcher] = {}

    def swap(self, alias: str, model: LoadedModel) -> None:
        """Serve ``model`` under ``alias`` from the next request on: one assignment."""
        self._aliases[model.name, alias] = model
        self._forget_unserved()

    def drop(self, name: str, alias: str) -> None:
        """Stop serving ``alias`` (it was deleted); requests holding it finish."""
        self._aliases.pop((name, alias), None)
        self._forget_unserved()

    def _forget_unserved(self) -> None:
        """Drop the batchers of versions no alias serves; calls already in one finish."""
        served = {(m.name, m.version, m.sha256) for m in self._aliases.values()}
        for key in set(self._batchers) - served:
            del self._batchers[key]

    def current(self, name: str, alias: str) -> LoadedModel | None:
        return self._aliases.get((name, alias))

    def ready(self) -> bool:
        """Every configured alias has a version loaded."""
        return all(
            (name, alias) in self._aliases
            for name, aliases in self.wanted.items()
            for alias in aliases
        )

    def versions(self, name: str) -> list[LoadedModel]:
        """The distinct loaded versions of ``name``, newest first."""
        found = {m.version: m for (model, _), m in self._aliases.items() if model == name}
        return [found[v] for v in sorted(found, reverse=True)]

    def resolve(self, name: str, version: str) -> LoadedModel:
        """The model a request names: ``version`` empty means the champion; else a
        version number or an alias. NotFoundError names what is not served."""
        if not version or not version.isdigit():
            return self.by_alias(name, version or CHAMPION)
        return self.by_version(name, int(version))

    def by_alias(self, name: str, alias: str) -> LoadedModel:
        """The version ``alias`` serves; NotFoundError names the model or the alias."""
        self._known(name)
        model = self.current(name, alias)
        if model is None:
            raise NotFoundError(f"alias {alias!r} of model {name!r}")
        return model

    def by_version(self, name: str, version: int) -> LoadedModel:
        """Loaded version ``version``; NotFoundError names the model or the version."""
        self._known(name)
        for model in self.versions(name):
            if model.version == version:
                return model
        raise NotFoundError(f"version {version} of model {name!r}")

    def _known(self, name: str) -> None:
        if name not in self.wanted:
            raise NotFoundError(f"model {name!r} (served: {sorted(self.wanted)})")

    async def run(self, model: LoadedModel, feeds: Mapping[str, Array]) -> dict[str, Array]:
        """Run ``model`` on ``feeds``: the one way ModelInfer and Predict reach a session.

        Concurrent calls of one version are batched. A run expected to take at most
        ``inline_budget`` seconds (its rows times the model's ``row_seconds``, an upper
        bound for models that batch well) runs on the event loop; longer ones run in a
        thread, so the loop keeps serving other requests.
        """
        key = (model.name, model.version, model.sha256)
        batcher = self._batchers.get(key)
        if batcher is None:
            batcher = self._batchers[key] = Batcher(
                model.run,
                model.inputs,
                max_rows=self._batch_rows,
                max_wait=self._batch_wait,
                inline_rows=self._inline_rows(model),
                counted=lambda calls: self._counted(model.name, model.version, calls),
            )
        return await batcher.run(feeds)

    def warm(self, model: LoadedModel) -> None:
        """Run ``model`` once on its example, if a small run of it may run on the loop.

        For a call alone in the gateway: run while it waits for its features, this brings
        the model back into the CPU's caches, which the time between calls emptied, for
        the real run that follows (bench/README.md). Nothing is counted or returned.
        """
        if model.example and self._inline_rows(model) > 0:
            model.run(model.example)

    def _inline_rows(self, model: LoadedModel) -> int:
        """Most rows of ``model`` that run on the event loop within the inline budget."""
        if self._inline_budget <= 0:
            return 0
        if model.row_seconds <= 0:
            return self._batch_rows
        return int(min(self._batch_rows, self._inline_budget / model.row_seconds))

"""The data plane: the model versions loaded in memory, and which one each alias serves.

A version is an ONNX Runtime session, warmed with one inference before anyone can
reach it. Moving an alias is one dict assignment: a request that already took the
old version finishes on it (it holds the reference), the next one takes the new
version, and no request waits for a load.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import onnxruntime as ort

from strata.core.errors import NotFoundError
from strata.gateway.tensors import DTYPES, Array, TensorSpec

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

    def run(self, feeds: Mapping[str, Array]) -> dict[str, Array]:
        """Outputs by name for ``feeds`` (checked by :func:`tensors.decode_inputs`)."""
        names = [spec.name for spec in self.outputs]
        return dict(zip(names, self.session.run(names, dict(feeds)), strict=True))


def load(name: str, version: int, sha256: str, onnx: bytes) -> LoadedModel:
    """A session for ``onnx``, warmed with one inference on zeros; blocking (run it in a thread).

    Its signature is read from the session, the authority on what it accepts. A
    model whose tensors Strata cannot serve yet raises ValueError naming the tensor.
    """
    options = ort.SessionOptions()
    session = ort.InferenceSession(onnx, options, providers=["CPUExecutionProvider"])
    model = LoadedModel(
        name=name,
        version=version,
        sha256=sha256,
        inputs=tuple(_spec(arg) for arg in session.get_inputs()),
        outputs=tuple(_spec(arg) for arg in session.get_outputs()),
        session=session,
    )
    model.run({spec.name: spec.example() for spec in model.inputs})
    return model


def _spec(arg: ort.NodeArg) -> TensorSpec:
    datatype = _ORT_TYPES.get(arg.type)
    if datatype is None or datatype not in DTYPES:
        raise ValueError(f"tensor {arg.name!r} has type {arg.type}, which is not served yet")
    shape = tuple(d if isinstance(d, int) else -1 for d in arg.shape)
    return TensorSpec(arg.name, datatype, shape)


class Served:
    """What the gateway answers with: the loaded version behind each (model, alias)."""

    def __init__(self, wanted: Mapping[str, list[str]]) -> None:
        self.wanted = {name: tuple(aliases) for name, aliases in wanted.items()}
        self._aliases: dict[tuple[str, str], LoadedModel] = {}

    def swap(self, alias: str, model: LoadedModel) -> None:
        """Serve ``model`` under ``alias`` from the next request on: one assignment."""
        self._aliases[model.name, alias] = model

    def drop(self, name: str, alias: str) -> None:
        """Stop serving ``alias`` (it was deleted); requests holding it finish."""
        self._aliases.pop((name, alias), None)

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
        if name not in self.wanted:
            raise NotFoundError(f"model {name!r} (served: {sorted(self.wanted)})")
        if not version or not version.isdigit():
            alias = version or CHAMPION
            model = self.current(name, alias)
            if model is None:
                raise NotFoundError(f"alias {alias!r} of model {name!r}")
            return model
        for model in self.versions(name):
            if model.version == int(version):
                return model
        raise NotFoundError(f"version {version} of model {name!r}")

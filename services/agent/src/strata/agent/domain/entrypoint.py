"""An assignment's entrypoint, ``package.module:function``, and the arguments it is called with."""

from __future__ import annotations

import inspect
import keyword
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from strata.core.errors import InvalidArgumentError


@dataclass(frozen=True)
class Entrypoint:
    """Where a task's function lives: a module to import and a (dotted) attribute in it."""

    module: str
    function: str

    @classmethod
    def parse(cls, text: str) -> Entrypoint:
        """Read ``"package.module:function"``; refuse anything else naming the entrypoint."""
        module, sep, function = text.partition(":")
        if not sep or not _dotted(module) or not _dotted(function):
            raise InvalidArgumentError(
                "entrypoint", f"expected 'package.module:function', got {text!r}"
            )
        return cls(module, function)

    def __str__(self) -> str:
        return f"{self.module}:{self.function}"


def _dotted(name: str) -> bool:
    parts = name.split(".")
    return all(p.isidentifier() and not keyword.iskeyword(p) for p in parts)


def call_arguments(
    signature: inspect.Signature,
    args: Mapping[str, Any],
    upstream_outputs: Mapping[str, Mapping[str, Any]],
) -> dict[str, Any]:
    """Keyword arguments for a task function: its args, and the upstream outputs it asks for.

    The args (run parameters merged with the task's own) are passed as keywords. An
    upstream task's outputs are passed to the parameter named after its task id
    (``-`` read as ``_``: task ``extract-rows`` feeds ``extract_rows``), as Prefect
    and Dagster pass upstream results, and only when the function declares it, so
    a task that ignores its upstreams needs no parameter for them.
    """
    accepts_any = any(p.kind is p.VAR_KEYWORD for p in signature.parameters.values())
    arguments = dict(args)
    for task_id, outputs in upstream_outputs.items():
        name = task_id.replace("-", "_")
        if name in signature.parameters or accepts_any:
            arguments.setdefault(name, dict(outputs))
    return arguments

"""Reading a user's workflow file (:mod:`strata.sdk.declarations`)."""

from __future__ import annotations

from pathlib import Path

from strata.sdk.declarations import declared_in
from strata.sdk.workflows.workflow import Workflow


def load_workflows(path: Path) -> list[Workflow]:
    """The Workflow objects at the top level of ``path``, in declaration order."""
    return declared_in(path, Workflow)

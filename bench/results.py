"""What every benchmark's report shares: the run's header and the files under ``bench/results/``.

Each benchmark (bus, serving, dispatch, features) builds its own tables from the
result objects of its run; this module puts the date, duration, command and
machine facts above them, and writes ``<name>-<UTC time>.md`` and ``.json`` (the
JSON keeps every figure unrounded, with the rerun command and the table).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

from strata.core.settings import REPO_ROOT

RESULTS = REPO_ROOT / "bench" / "results"


def header(
    started: datetime, seconds: float, command: str, machine: Mapping[str, str]
) -> list[str]:
    """The lines above a report's tables: when, how long, what ran, on what."""
    facts = ", ".join(f"{name} {value}" for name, value in machine.items())
    return [
        f"Run {started:%Y-%m-%d %H:%M} UTC, {seconds:.0f} s: `{command}`",
        "",
        f"Machine: {facts}.",
        "",
    ]


def write(
    name: str, started: datetime, raw: Mapping[str, Any], markdown: str, folder: Path = RESULTS
) -> tuple[Path, Path]:
    """Write ``<name>-<time>.json`` (``raw`` plus the table) and ``.md``; return their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    stem = folder / f"{name}-{started:%Y%m%dT%H%M%SZ}"
    record = {**raw, "table": markdown}
    stem.with_suffix(".json").write_text(json.dumps(record, indent=2, default=_plain) + "\n")
    stem.with_suffix(".md").write_text(markdown + "\n")
    return stem.with_suffix(".json"), stem.with_suffix(".md")


def _plain(value: Any) -> str:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"cannot write a {type(value).__name__} as JSON")

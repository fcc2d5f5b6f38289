"""The Feast side of the benchmark, run by the Python of Feast's own virtualenv.

``<feast venv>/bin/python feast_worker.py <repo folder>`` reads one JSON command a
line on stdin and answers one JSON line on stdout (Feast's own logs go to stderr),
so the benchmark can interleave Feast's rounds with Strata's and DuckDB's while
Feast's imports and registry stay warm in this one process. It imports nothing
from Strata: Feast runs in its own environment, as a user would install it.

Commands:

- ``{"op": "apply", "rows": path, "online_rows": path}``: declare the entity
  ``driver`` and two feature views on those Parquet files (``driver_stats``, the
  training rows, and ``driver_now``, the rows served online), both without TTL,
  and ``feast apply`` them.
- ``{"op": "historical", "labels": path, "out": path}``: a point-in-time training
  set for the labels (``driver_id``, ``event_timestamp``, ``label_id``) with
  ``get_historical_features(...).to_df()``, timed; the result is written to
  ``out`` (``label_id`` and the features) after the clock stops.
- ``{"op": "materialize", "start": iso, "end": iso}``: ``driver_now`` into the
  Redis online store.
- ``{"op": "teardown"}``: remove what Feast keeps in the online store.
"""

from __future__ import annotations

import json
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

FEATURES = ("trips", "rating", "spend")


def main() -> None:
    from feast import FeatureStore  # type: ignore[import-not-found]

    answers, sys.stdout = sys.stdout, sys.stderr  # Feast prints progress; answers go apart
    store = FeatureStore(repo_path=sys.argv[1])
    for line in sys.stdin:
        command = json.loads(line)
        started = time.perf_counter()
        answer: dict[str, Any] = {"op": command["op"]}
        if command["op"] == "apply":
            _apply(store, command["rows"], command["online_rows"])
        elif command["op"] == "historical":
            frame = _historical(store, command["labels"])
            answer["seconds"] = time.perf_counter() - started
            answer["rows"] = len(frame)
            frame[["label_id", *FEATURES]].to_parquet(command["out"], index=False)
        elif command["op"] == "materialize":
            store.materialize(
                datetime.fromisoformat(command["start"]),
                datetime.fromisoformat(command["end"]),
                feature_views=["driver_now"],
            )
        elif command["op"] == "teardown":
            store.teardown()
        else:
            raise SystemExit(f"feast_worker: unknown op {command['op']!r}")
        answer.setdefault("seconds", time.perf_counter() - started)
        print(json.dumps(answer), file=answers, flush=True)


def _apply(store: Any, rows: str, online_rows: str) -> None:
    from feast import Entity, FeatureView, Field, FileSource, ValueType
    from feast.types import Float64, Int64  # type: ignore[import-not-found]

    driver = Entity(name="driver", join_keys=["driver_id"], value_type=ValueType.INT64)
    schema = [Field(name="trips", dtype=Int64)]
    schema += [Field(name="rating", dtype=Float64), Field(name="spend", dtype=Float64)]
    views = [
        FeatureView(
            name=name,
            entities=[driver],
            ttl=timedelta(0),
            schema=schema,
            source=FileSource(name=f"{name}_source", path=path, timestamp_field="event_time"),
            online=True,
        )
        for name, path in (("driver_stats", rows), ("driver_now", online_rows))
    ]
    store.apply([driver, *views])


def _historical(store: Any, labels: str) -> Any:
    import pandas  # type: ignore[import-untyped]

    entities = pandas.read_parquet(Path(labels))
    job = store.get_historical_features(
        entity_df=entities, features=[f"driver_stats:{name}" for name in FEATURES]
    )
    return job.to_df()


if __name__ == "__main__":
    main()

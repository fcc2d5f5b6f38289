"""``strata features apply|list|get|online|training-set|delete|backfill`` against a real
streamer.

What a team relies on: applying a file of views stores each one, re-applying it
changes nothing, a changed view becomes the next version; ``list`` and ``get``
show what is stored; ``online`` prints the values the streamer's writer stored
(``strata.transforms.online``), with status, and the default for an entity with
none; ``training-set`` writes each label row with the values its view had at the
row's time; ``delete`` removes a view, which ``get`` then cannot find;
``backfill`` says what it rebuilt; every
failure is one line on stderr naming what to fix, with exit code 1.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pyarrow.parquet as pq
import pytest
from redis.asyncio import Redis
from service_processes import free_port, running
from strata_cli import run_strata
from test_streamer_offline import announced, produce
from topics import topic_with_dead_letters

from strata.api.features.v1 import features_pb2 as pb
from strata.api.features.v1.features_pb2_grpc import FeatureServiceStub
from strata.sdk.features.loading import load_feature_views
from strata.transforms.online import online_key, write_online
from strata.transforms.streaming import StreamingExecutor

pytestmark = pytest.mark.integration

TOKENS = {"dev-token": {"principal": "alice", "roles": ["developer"]}}
DEV = (("authorization", "Bearer dev-token"),)

VIEWS_FILE = """
from strata.sdk.features import Aggregate, Entity, FeatureView, Field, Float64, Int64, Latest
from strata.sdk.features import Timestamp, Topic

courier = Entity("courier", join_keys=("courier_id",))
deliveries = Topic(
    "raw.{name}",
    schema=[Field("courier_id", Int64), Field("event_time", Timestamp), Field("minutes", Float64)],
)
stats = FeatureView(
    "{name}",
    entities=[courier],
    source=deliveries,
    event_time="event_time",
    transforms={{"hours": "minutes / 60"}},
    features=[
        Aggregate("count", window="{window}", name="deliveries"),
        Aggregate("sum", window="{window}", column="hours"),
        Latest("minutes", default=-1.0),
    ],
    ttl="7d",
    owner="couriers-team",
)
"""


@pytest.fixture(scope="module")
async def streamer(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[str]:
    """A streamer process; yields its address once it is SERVING."""
    folder = tmp_path_factory.mktemp("streamer")
    async with running(
        "streamer", folder, STRATA_AUTH_TOKENS=json.dumps(TOKENS), STRATA_BLOB_BACKEND="s3"
    ) as service:
        yield service.address


def _name(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:10]}"


def _views_file(tmp_path: Path, name: str, window: str = "1h") -> Path:
    path = tmp_path / "views.py"
    path.write_text(VIEWS_FILE.format(name=name, window=window))
    return path


async def _strata(streamer: str, *args: str) -> tuple[int, str, str]:
    """Run the ``strata`` CLI against ``streamer`` as the developer; exit code, stdout, stderr."""
    env = {
        **os.environ,
        "STRATA_SERVICE_STREAMER_PORT": streamer.rsplit(":", 1)[1],
        "STRATA_AUTH_CLIENT_TOKEN": "dev-token",
        "STRATA_BLOB_BACKEND": "s3",
        "COLUMNS": "200",
    }
    return await run_strata(*args, env=env)


async def test_apply_stores_a_view_and_reapplying_it_changes_nothing(
    streamer: str, tmp_path: Path
) -> None:
    name = _name("cli_apply")
    path = _views_file(tmp_path, name)

    applied = await _strata(streamer, "features", "apply", str(path))
    again = await _strata(streamer, "features", "apply", str(path))
    _views_file(tmp_path, name, window="2h")
    changed = await _strata(streamer, "features", "apply", str(path))

    assert applied == (0, f"{name}: is version 1 (changed)\n", "")
    assert again == (0, f"{name}: is version 1 (unchanged)\n", "")
    assert changed == (0, f"{name}: is version 2 (changed)\n", "")
    async with grpc.aio.insecure_channel(streamer) as channel:
        stored = await FeatureServiceStub(channel).GetFeatureView(
            pb.GetFeatureViewRequest(name=name), metadata=DEV
        )
    assert stored.feature_view.version == 2
    assert stored.feature_view.spec == load_feature_views(path)[0].to_spec()


async def test_list_and_get_show_the_stored_view(streamer: str, tmp_path: Path) -> None:
    name = _name("cli_show")
    path = _views_file(tmp_path, name)
    assert (await _strata(streamer, "features", "apply", str(path)))[0] == 0

    listed = await _strata(streamer, "features", "list")
    shown = await _strata(streamer, "features", "get", name)

    code, out, _ = listed
    assert code == 0
    row = next(line for line in out.splitlines() if name in line)
    assert f"topic raw.{name}" in row
    assert "couriers-team" in row
    assert "alice" in row
    code, out, err = shown
    assert (code, err) == (0, "")
    assert out.splitlines()[0].startswith(f"{name} version 1 (sha256 ")
    assert "entities: courier_id int64" in out
    assert "ttl: 1w; owner: couriers-team" in out
    assert "transform: hours = minutes / 60" in out
    assert _cells(out)["hours_sum_1h"] == ["double", "hours", "sum", "1h", "null"]


async def test_online_prints_the_stored_values_and_defaults(
    streamer: str, online: Redis, tmp_path: Path
) -> None:
    name = _name("cli_online")
    path = _views_file(tmp_path, name)
    assert (await _strata(streamer, "features", "apply", str(path)))[0] == 0
    view = load_feature_views(path)[0].definition
    seen = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=5)
    executor = StreamingExecutor(view)
    executor.ingest(
        [
            {"courier_id": 42, "event_time": seen - timedelta(minutes=m), "minutes": minutes}
            for m, minutes in ((2, 15.0), (1, 10.0), (0, 20.0))
        ]
    )
    await write_online(online, view, {(42,): executor.online_row((42,))})
    try:
        stored = await _strata(streamer, "features", "online", name, "--entity", "courier_id=42")
        missing = await _strata(streamer, "features", "online", name, "--entity", "courier_id=7")
    finally:
        await online.delete(online_key(view, (42,)))

    code, out, err = stored
    assert (code, err) == (0, "")
    stamp = seen.replace(tzinfo=None).isoformat() + "Z"
    cells = _cells(out)
    assert cells["deliveries"] == ["3", "present", stamp]
    assert cells["hours_sum_1h"] == ["0.75", "present", stamp]
    assert cells["minutes"] == ["20.0", "present", stamp]
    code, out, err = missing
    assert (code, err) == (0, "")
    cells = _cells(out)
    assert cells["minutes"] == ["-1.0", "not_found", "-"]
    assert cells["deliveries"] == ["null", "not_found", "-"]


def _cells(out: str) -> dict[str, list[str]]:
    """The rows of a printed table by their first cell (no cell here holds a space)."""
    rows = [[c for c in line.split() if c != "│"] for line in out.splitlines() if "│" in line]
    return {row[0]: row[1:] for row in rows}


async def _one_line_failure(streamer: str, *args: str) -> str:
    code, out, err = await _strata(streamer, *args)
    assert (code, out) == (1, "")
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


async def test_two_definitions_of_one_name_are_refused_and_nothing_is_stored(
    streamer: str, tmp_path: Path
) -> None:
    name = _name("cli_twice")
    path = _views_file(tmp_path, name)
    path.write_text(
        path.read_text() + f'\nother = FeatureView("{name}", entities=[courier], '
        'source=deliveries, event_time="event_time", features=[Latest("minutes")])\n'
    )

    line = await _one_line_failure(streamer, "features", "apply", str(path))

    assert line.startswith(f"{path}: ")
    assert f"feature view '{name}' is declared twice with different definitions" in line
    assert f"feature view '{name}'" in await _one_line_failure(streamer, "features", "get", name)


async def test_failures_are_one_line_naming_what_to_fix(streamer: str, tmp_path: Path) -> None:
    name = _name("cli_fail")
    path = _views_file(tmp_path, name, window="1 hour")
    assert (await _strata(streamer, "features", "apply", str(_views_file(tmp_path, name))))[0] == 0
    _views_file(tmp_path, name, window="1 hour")

    bad_file = await _one_line_failure(streamer, "features", "apply", str(path))
    unknown = await _one_line_failure(streamer, "features", "get", f"{name}_nope")
    bad_key = await _one_line_failure(
        streamer, "features", "online", name, "--entity", "courier_id=abc"
    )
    gone = await _one_line_failure(f"127.0.0.1:{free_port()}", "features", "list")

    assert bad_file.startswith(f"{path}: invalid feature_view[{name}].features[deliveries].window")
    assert unknown == f"get: NOT_FOUND: feature view '{name}_nope' not found"
    assert bad_key == "invalid --entity courier_id=abc: expected an integer, got 'abc'"
    assert gone.startswith("the streamer is not reachable: ")


async def test_delete_removes_the_view_and_says_what_went(streamer: str, tmp_path: Path) -> None:
    name = _name("cli_delete")
    assert (await _strata(streamer, "features", "apply", str(_views_file(tmp_path, name))))[0] == 0

    deleted = await _strata(streamer, "features", "delete", name)
    again = await _one_line_failure(streamer, "features", "delete", name)

    assert deleted == (
        0,
        f"{name}: deleted (version 1, 1 version(s), 0 online value(s)); "
        "its offline partitions stay\n",
        "",
    )
    assert again == f"feature view '{name}': NOT_FOUND: feature view '{name}' not found"
    assert f"feature view '{name}'" in await _one_line_failure(streamer, "features", "get", name)


async def test_backfill_says_what_it_rebuilt_and_refuses_a_bad_time(
    streamer: str, tmp_path: Path
) -> None:
    name = _name("cli_backfill")
    assert (await _strata(streamer, "features", "apply", str(_views_file(tmp_path, name))))[0] == 0

    rebuilt = await _strata(streamer, "features", "backfill", name, "--from", "2026-06-01")
    bad_time = await _one_line_failure(streamer, "features", "backfill", name, "--to", "soon")

    assert rebuilt == (
        0,
        f"{name}: version 1 backfilled: 0 entities from 0 rows in 0 partition(s)\n",
        "",
    )
    assert bad_time == (
        "--to 'soon': expected an ISO 8601 time, e.g. 2026-01-01 or 2026-01-01T03:00"
    )


async def test_training_set_writes_each_label_row_with_the_values_at_its_time(
    streamer: str, tmp_path: Path
) -> None:
    name = _name("cli_training")
    path = _views_file(tmp_path, name)
    t0 = datetime(2026, 6, 1, 8, 0, tzinfo=UTC)
    events = [
        {"courier_id": 1, "event_time": t0.isoformat(), "minutes": 30.0},
        {"courier_id": 1, "event_time": (t0 + timedelta(minutes=20)).isoformat(), "minutes": 60.0},
        {"courier_id": 1, "event_time": (t0 + timedelta(minutes=90)).isoformat(), "minutes": 6.0},
    ]
    labels = tmp_path / "labels.csv"
    labels.write_text(
        "courier_id,event_time,late\n"
        "1,2026-06-01T08:25:00Z,true\n"
        "1,2026-06-01T09:10:00Z,false\n"
        "9,2026-06-01T09:10:00Z,true\n"
    )
    unlabelled = tmp_path / "no_time.csv"
    unlabelled.write_text("courier_id,late\n1,true\n")
    out = tmp_path / "training.parquet"
    async with raw_topic(f"raw.{name}") as topic:
        assert (await _strata(streamer, "features", "apply", str(path)))[0] == 0
        await produce(topic, events)
        await announced(topic, len(events))
        built = await _strata(
            streamer, "features", "training-set", name, "--labels", str(labels), "--out", str(out)
        )
        refused = await _one_line_failure(
            streamer, "features", "training-set", name, "--labels", str(unlabelled), "--out", "x"
        )

    code, printed, err = built
    assert (code, err) == (0, "")
    assert printed.splitlines()[-1].endswith(f"3 rows, sha256:{_sha256(out)}, written to {out}")
    table = pq.read_table(out)
    assert table.column("late").to_pylist() == [True, False, True]
    # Worked out by hand; the 09:30 event is after every label, so no row sees it.
    assert table.column(f"{name}:deliveries").to_pylist() == [2, 1, None]
    assert table.column(f"{name}:hours_sum_1h").to_pylist() == [1.5, 1.0, None]
    assert table.column(f"{name}:minutes").to_pylist() == [60.0, 60.0, -1.0]
    assert "'event_time'" in refused


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@contextlib.asynccontextmanager
async def raw_topic(name: str) -> AsyncIterator[str]:
    """A raw topic (with its dead-letter topic) for the test's view, deleted after."""
    async with topic_with_dead_letters(name) as topic:
        yield topic

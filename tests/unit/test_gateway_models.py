"""The data plane: a loaded version answers, and an alias moves in one assignment."""

from __future__ import annotations

import dataclasses
import hashlib
import math
import threading
from datetime import UTC, datetime, timedelta
from typing import cast

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from strata.api.common.v1.envelope_pb2 import Envelope
from strata.core.errors import NotFoundError
from strata.gateway.aliases import (
    CLOCK_SKEW,
    IntegrityError,
    check_sha256,
    consumer_group,
    predates,
)
from strata.gateway.models import LoadedModel, Served, load
from strata.transforms.featurize import Array, TensorSpec


def times(factor: float) -> bytes:
    """y = x * factor, for x of shape [batch, 2]."""
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "k"], ["y"])],
        "times",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 2])],
        initializer=[helper.make_tensor("k", TensorProto.FLOAT, [], [factor])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def _load(version: int, factor: float, name: str = "eta") -> LoadedModel:
    data = times(factor)
    return load(name, version, hashlib.sha256(data).hexdigest(), data)


def test_a_loaded_version_reads_its_signature_from_the_file_and_answers() -> None:
    model = _load(1, 2.0)
    assert model.inputs == (TensorSpec("x", "FP32", (-1, 2)),)
    assert model.outputs == (TensorSpec("y", "FP32", (-1, 2)),)
    out = model.run({"x": np.array([[1.0, 2.0]], dtype=np.float32)})
    np.testing.assert_array_equal(out["y"], [[2.0, 4.0]])


@pytest.mark.parametrize("threads", [1, 3])
def test_a_loaded_version_runs_on_the_threads_asked_whose_pool_never_spins(threads: int) -> None:
    data = times(2.0)
    model = load("eta", 1, hashlib.sha256(data).hexdigest(), data, threads=threads)
    options = model.session.get_session_options()
    assert options.intra_op_num_threads == threads
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert options.get_session_config_entry("session.inter_op.allow_spinning") == "0"


def test_moving_an_alias_leaves_a_request_holding_the_old_version_on_it() -> None:
    served = Served({"eta": ["champion"]})
    assert not served.ready()
    served.swap("champion", _load(1, 2.0))
    held = served.resolve("eta", "")
    served.swap("champion", _load(2, 3.0))
    x = {"x": np.ones((1, 2), dtype=np.float32)}
    np.testing.assert_array_equal(held.run(x)["y"], [[2.0, 2.0]])
    np.testing.assert_array_equal(served.resolve("eta", "").run(x)["y"], [[3.0, 3.0]])
    assert served.ready()


def test_a_request_names_the_champion_an_alias_or_a_loaded_version() -> None:
    served = Served({"eta": ["champion", "challenger"]})
    served.swap("champion", _load(1, 2.0))
    served.swap("challenger", _load(2, 3.0))
    assert served.resolve("eta", "").version == 1
    assert served.resolve("eta", "challenger").version == 2
    assert served.resolve("eta", "2").version == 2
    assert [m.version for m in served.versions("eta")] == [2, 1]


@pytest.mark.parametrize(
    ("name", "version", "named"),
    [
        ("nope", "", "'nope'"),
        ("eta", "7", "version 7"),
        ("eta", "challenger", "'challenger'"),
    ],
)
def test_what_is_not_served_is_not_found_by_name(name: str, version: str, named: str) -> None:
    served = Served({"eta": ["champion"]})
    served.swap("champion", _load(1, 2.0))
    with pytest.raises(NotFoundError, match=named):
        served.resolve(name, version)


def test_a_file_whose_sha256_differs_is_refused_naming_both() -> None:
    data = times(2.0)
    check_sha256(data, hashlib.sha256(data).hexdigest())
    with pytest.raises(IntegrityError, match="0" * 64):
        check_sha256(data + b"x", "0" * 64)


def test_each_replica_has_a_consumer_group_of_its_own() -> None:
    assert consumer_group("host-a") != consumer_group("host-a")
    assert consumer_group("host-a").startswith("gateway-host-a-")


def test_only_events_from_before_the_start_less_the_clock_skew_are_skipped() -> None:
    start = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
    old, recent = Envelope(), Envelope()
    old.occurred_at.FromDatetime(start - CLOCK_SKEW - timedelta(seconds=1))
    recent.occurred_at.FromDatetime(start - CLOCK_SKEW + timedelta(seconds=1))
    assert predates(old, start)
    assert not predates(recent, start)


class _Recorded:
    """A session that remembers the thread of each run, answering with the real one."""

    def __init__(self, session: ort.InferenceSession) -> None:
        self.session = session
        self.threads: list[int] = []

    def run(self, names: list[str], feeds: dict[str, Array]) -> list[Array]:
        self.threads.append(threading.get_ident())
        answer: list[Array] = self.session.run(names, feeds)
        return answer


def _recorded(model: LoadedModel, row_seconds: float) -> tuple[LoadedModel, _Recorded]:
    recorded = _Recorded(model.session)
    changed = dataclasses.replace(
        model, session=cast(ort.InferenceSession, recorded), row_seconds=row_seconds
    )
    return changed, recorded


def test_a_loaded_version_knows_how_long_a_one_row_run_takes() -> None:
    row_seconds = _load(1, 2.0).row_seconds
    assert 0 < row_seconds < math.inf


async def test_a_model_within_the_inline_budget_runs_on_the_loop_a_slower_one_in_a_thread() -> None:
    served = Served({"eta": ["champion"], "slow": ["champion"]}, inline_budget=0.001)
    quick, quick_runs = _recorded(_load(1, 2.0), row_seconds=0.0001)
    slow, slow_runs = _recorded(_load(1, 2.0, "slow"), row_seconds=0.01)
    x = {"x": np.ones((1, 2), dtype=np.float32)}
    np.testing.assert_array_equal((await served.run(quick, x))["y"], [[2.0, 2.0]])
    np.testing.assert_array_equal((await served.run(slow, x))["y"], [[2.0, 2.0]])
    loop = threading.get_ident()
    assert quick_runs.threads == [loop]
    assert len(slow_runs.threads) == 1
    assert slow_runs.threads[0] != loop


def test_warming_runs_a_model_within_the_inline_budget_on_its_example_and_no_other() -> None:
    served = Served({"eta": ["champion"], "slow": ["champion"]}, inline_budget=0.001)
    quick, quick_runs = _recorded(_load(1, 2.0), row_seconds=0.0001)
    slow, slow_runs = _recorded(_load(1, 2.0, "slow"), row_seconds=0.01)
    served.warm(quick)
    served.warm(slow)
    assert quick_runs.threads == [threading.get_ident()]
    assert slow_runs.threads == []
    assert set(quick.example) == {"x"}
    assert quick.example["x"].shape == (1, 2)

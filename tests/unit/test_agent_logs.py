"""The blob keys of attempts' output: what the agent writes is what ``workflow logs`` reads."""

from __future__ import annotations

import pytest

from strata.core.attempt_logs import STREAMS, log_key, prefix
from strata.sdk.workflows.logs import LogStream, streams_of


def test_the_logs_command_finds_every_stream_the_agent_writes_in_order() -> None:
    keys = [
        log_key("run-1", task, attempt, s)
        for task in ("b", "a")
        for attempt in (2, 1)
        for s in reversed(STREAMS)
    ]
    assert all(key.startswith(prefix("run-1")) for key in keys)
    found = streams_of(keys, "run-1")
    assert [(s.task_id, s.attempt, s.stream) for s in found] == [
        ("a", 1, "stdout"),
        ("a", 1, "stderr"),
        ("a", 2, "stdout"),
        ("a", 2, "stderr"),
        ("b", 1, "stdout"),
        ("b", 1, "stderr"),
        ("b", 2, "stdout"),
        ("b", 2, "stderr"),
    ]


def test_a_task_prefix_holds_only_that_tasks_output() -> None:
    assert log_key("run-1", "train", 1, "stdout").startswith(prefix("run-1", "train"))
    assert not log_key("run-1", "train-2", 1, "stdout").startswith(prefix("run-1", "train"))


def test_keys_of_another_shape_or_run_are_not_output() -> None:
    keys = ["logs/run-1/a/x/stdout", "logs/run-1/a/1/core", "logs/run-2/a/1/stdout", "logs/run-1"]
    assert streams_of(keys, "run-1") == []
    assert streams_of(["logs/run-1/a/1/stdout"], "run-1") == [
        LogStream("a", 1, "stdout", "logs/run-1/a/1/stdout")
    ]


def test_an_unknown_stream_is_refused_naming_it() -> None:
    with pytest.raises(ValueError, match="'core'"):
        log_key("run-1", "a", 1, "core")

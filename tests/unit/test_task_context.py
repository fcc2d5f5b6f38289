"""What the agent tells a task about its attempt, read back as the SDK reads it."""

from __future__ import annotations

import pytest

from strata.core.task_context import TaskContext, from_environment

TOLD = TaskContext("7f3c", "daily-train", "train", 2, "node-a")


def test_a_context_read_back_from_the_variables_the_agent_sets_is_the_same() -> None:
    assert from_environment({"PATH": "/bin", **TOLD.environment()}) == TOLD


def test_the_variables_are_named_for_users_who_read_them_without_the_sdk() -> None:
    assert TOLD.environment() == {
        "STRATA_RUN_ID": "7f3c",
        "STRATA_WORKFLOW": "daily-train",
        "STRATA_TASK_ID": "train",
        "STRATA_ATTEMPT": "2",
        "STRATA_NODE_ID": "node-a",
    }


def test_outside_a_task_the_error_names_the_missing_variable() -> None:
    environment = TOLD.environment()
    del environment["STRATA_RUN_ID"]
    with pytest.raises(RuntimeError, match="not running as a Strata task: STRATA_RUN_ID is not"):
        from_environment(environment)


def test_an_attempt_that_is_not_a_number_is_refused_naming_it() -> None:
    environment = {**TOLD.environment(), "STRATA_ATTEMPT": "two"}
    with pytest.raises(RuntimeError, match="STRATA_ATTEMPT must be the attempt number, got 'two'"):
        from_environment(environment)

"""Cancellation as a pure decision: what a request to stop does, by where the attempt is."""

from __future__ import annotations

from strata.provisioner.domain.cancellation import Step, Where, reason_or_default, step


def test_a_queued_attempt_is_reported_cancelled_by_the_provisioner() -> None:
    assert step(Where.QUEUED) is Step.REPORT_CANCELLED


def test_a_placed_attempt_is_stopped_by_its_agent() -> None:
    assert step(Where.PLACED) is Step.TELL_THE_AGENT


def test_an_attempt_that_ended_already_is_left_alone() -> None:
    assert step(Where.GONE) is Step.NOTHING


def test_a_cancellation_always_says_why() -> None:
    assert reason_or_default("  ") == "the run was cancelled"
    assert reason_or_default("bob cancelled it") == "bob cancelled it"

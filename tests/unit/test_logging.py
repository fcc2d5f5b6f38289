"""Every log line of a Strata process is one JSON object with the fields people search by."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
import structlog
from opentelemetry.sdk.trace import TracerProvider

from strata.core.logging import configure_logging
from strata.core.settings import TelemetrySettings


@pytest.fixture
def restored_logging() -> Iterator[None]:
    """configure_logging changes process-wide state; put it back for the other tests."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    structlog.reset_defaults()


def _lines(err: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in err.splitlines() if line.strip()]


@pytest.mark.usefixtures("restored_logging")
def test_structlog_and_stdlib_lines_carry_the_same_fields(
    capsys: pytest.CaptureFixture[str],
) -> None:
    configure_logging("scheduler", TelemetrySettings(log_format="json", log_level="INFO"))
    structlog.get_logger("strata.test").info("run started", run_id="r1")
    logging.getLogger("aiokafka").warning("broker %s gone", "b1")
    mine, library = _lines(capsys.readouterr().err)
    for line in (mine, library):
        assert line["service"] == "scheduler"
        assert {"timestamp", "level", "event"} <= line.keys()
    assert (mine["event"], mine["level"], mine["run_id"]) == ("run started", "info", "r1")
    assert (library["event"], library["level"]) == ("broker b1 gone", "warning")


@pytest.mark.usefixtures("restored_logging")
def test_a_line_written_inside_a_span_carries_its_trace_and_span_id(
    capsys: pytest.CaptureFixture[str],
) -> None:
    configure_logging("gateway", TelemetrySettings(log_format="json"))
    tracer = TracerProvider().get_tracer("test")
    with tracer.start_as_current_span("predict") as span:
        structlog.get_logger("strata.test").info("predicted")
    structlog.get_logger("strata.test").info("idle")
    inside, outside = _lines(capsys.readouterr().err)
    context = span.get_span_context()
    assert inside["trace_id"] == format(context.trace_id, "032x")
    assert inside["span_id"] == format(context.span_id, "016x")
    assert "trace_id" not in outside


@pytest.mark.usefixtures("restored_logging")
def test_lines_below_the_level_are_left_out(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("agent", TelemetrySettings(log_format="json", log_level="WARNING"))
    structlog.get_logger("strata.test").info("chatter")
    structlog.get_logger("strata.test").warning("disk almost full")
    assert [line["event"] for line in _lines(capsys.readouterr().err)] == ["disk almost full"]

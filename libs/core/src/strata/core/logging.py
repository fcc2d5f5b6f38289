"""Structured log lines for every Strata process, on stderr.

Each line carries ``timestamp``, ``level``, ``service`` and ``event``, plus the
OpenTelemetry ``trace_id``/``span_id`` when a span is active, so a line can be
found from a trace and the other way round. Libraries that log through the
standard ``logging`` module (aiokafka, asyncpg, grpc) come out the same way.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog
from opentelemetry import trace
from structlog.typing import Processor

from strata.core.settings import TelemetrySettings


def configure_logging(service: str, settings: TelemetrySettings) -> None:
    """Route structlog and stdlib logging to one stderr handler, as json or console lines."""
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _static({"service": service}),
        add_trace_context,
    ]
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                _leading_keys,
                *_rendering(settings.log_format),
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level)


def add_trace_context(
    _logger: Any, _method: str, event: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """Add the active span's ``trace_id`` and ``span_id`` in the W3C hex form."""
    context = trace.get_current_span().get_span_context()
    if context.is_valid:
        event["trace_id"] = format(context.trace_id, "032x")
        event["span_id"] = format(context.span_id, "016x")
    return event


def _static(fields: dict[str, str]) -> Processor:
    def add(_logger: Any, _method: str, event: MutableMapping[str, Any]) -> Any:
        for key, value in fields.items():
            event.setdefault(key, value)
        return event

    return add


_LEADING = ("timestamp", "level", "service", "event")


def _leading_keys(_logger: Any, _method: str, event: MutableMapping[str, Any]) -> Any:
    """Put the keys every line has first, so json lines read alike at a glance."""
    return {**{key: event[key] for key in _LEADING if key in event}, **event}


def _rendering(log_format: str) -> list[Processor]:
    if log_format == "console":
        return [structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())]
    return [structlog.processors.dict_tracebacks, structlog.processors.JSONRenderer()]

"""The event bus benchmark: outbox relay, de-duplicating consumer, envelope and tracing cost.

``python -m bench.bus`` (or ``make bench``) runs it against the local stack and
writes its table and raw numbers under ``bench/results/``.
"""

"""The feature store benchmark: training sets, online reads and streaming freshness.

``python -m bench.features`` (or ``make bench``) runs it against the local stack,
side by side with Feast (installed into a virtualenv of its own) and raw DuckDB,
and writes its tables and raw numbers under ``bench/results/``.
"""

"""Strata's benchmarks, each run side by side with the peer a user would pick instead.

Run one with ``python -m bench.<name>``; see ``bench/README.md``.
"""

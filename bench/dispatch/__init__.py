"""Dispatch benchmark: workflows of no-op tasks through the real scheduler, provisioner and
agent, side by side with Prefect 3 on a local Prefect server (``python -m bench.dispatch``)."""

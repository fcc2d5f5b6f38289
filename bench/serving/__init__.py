"""Serving benchmark: the gateway's Open Inference Protocol beside MLServer, and a swap
under load; ``python -m bench.serving`` (see bench/README.md)."""

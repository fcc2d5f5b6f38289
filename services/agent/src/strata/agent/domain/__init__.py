"""What the agent decides without I/O: entrypoints, call arguments, outcomes, backoff."""

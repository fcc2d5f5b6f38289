"""The scheduler's domain: pure functions and frozen dataclasses, no I/O."""

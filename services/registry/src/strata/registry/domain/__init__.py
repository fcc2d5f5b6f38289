"""The registry's rules, with no I/O: which files are safe to keep, what a valid request is."""

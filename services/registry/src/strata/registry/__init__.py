"""strata.registry."""

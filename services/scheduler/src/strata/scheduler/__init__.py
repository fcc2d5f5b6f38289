"""strata.scheduler."""

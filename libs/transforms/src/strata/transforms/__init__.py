"""strata.transforms."""

"""strata.core."""

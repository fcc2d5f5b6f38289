"""strata.gateway."""

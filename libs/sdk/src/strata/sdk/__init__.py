"""strata.sdk."""

"""strata.agent."""

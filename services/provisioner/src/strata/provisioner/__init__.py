"""strata.provisioner."""

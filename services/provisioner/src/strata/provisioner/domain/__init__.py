"""The provisioner's decisions, without I/O: resources, registration, placement."""

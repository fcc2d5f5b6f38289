"""SQL migrations of the provisioner schema, applied in file-name order."""

"""strata.gateway: the deploy gateway.

``models`` is the data plane (loaded versions, the alias swap), ``tensors`` the
pure conversion of OIP tensors, ``aliases`` where models enter (from the registry,
on AliasChanged), ``api`` the Open Inference Protocol edge.
"""

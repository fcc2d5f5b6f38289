"""strata.transforms: one feature definition, executed alike by every path.

- ``definition``: the ``FeatureView`` dataclasses, validated on construction;
  ``spec`` converts them to and from the API's ``FeatureViewSpec``.
- ``expressions``: row-level transforms, compiled to Arrow compute (why: see there).
- ``rows``: source rows checked and transformed, the step all paths share.
- ``batch``: point-in-time values on DuckDB (and the rules every path follows).
- ``streaming``: incremental window state fed record by record, snapshot/restore.
- ``request``: request-time features from caller-supplied values.
- ``online``: the Redis layout of online values, its pipelined writes and reads.
"""

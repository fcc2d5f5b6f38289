"""The streamer's schema, as ``NNNN_name.sql`` files applied by ``strata.core.migrations``."""

"""strata.streamer."""

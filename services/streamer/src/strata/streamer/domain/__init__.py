"""The streamer's rules: who may read a view, when an apply makes a version, pages."""

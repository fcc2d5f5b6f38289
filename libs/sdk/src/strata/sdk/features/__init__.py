"""Declare feature views in Python and compile them to the streamer's ``FeatureViewSpec``."""

from strata.sdk.features.view import (
    Aggregate,
    Bool,
    Dataset,
    Entity,
    FeatureView,
    Field,
    Float64,
    Int64,
    Latest,
    Request,
    String,
    Timestamp,
    Topic,
)

__all__ = [
    "Aggregate",
    "Bool",
    "Dataset",
    "Entity",
    "FeatureView",
    "Field",
    "Float64",
    "Int64",
    "Latest",
    "Request",
    "String",
    "Timestamp",
    "Topic",
]

"""Reading a user's feature file (:mod:`strata.sdk.declarations`).

One apply must mean one definition per name: two different views with the same
name are refused, since which of them would win is an accident of declaration order.
"""

from __future__ import annotations

from pathlib import Path

from strata.core.errors import InvalidArgumentError
from strata.sdk.declarations import declared_in
from strata.sdk.features.view import FeatureView


def load_feature_views(path: Path) -> list[FeatureView]:
    """The distinct FeatureView objects at the top level of ``path``, in declaration order.

    Besides the file's own problems (:func:`strata.sdk.declarations.declared_in`),
    two different views of one name are refused.
    """
    return distinct_views(str(path), declared_in(path, FeatureView))


def distinct_views(where: str, views: list[FeatureView]) -> list[FeatureView]:
    """``views`` without repeats of one definition; refused when one name has two."""
    chosen: dict[str, FeatureView] = {}
    for view in views:
        first = chosen.setdefault(view.name, view)
        if first is not view and first.to_spec() != view.to_spec():
            raise InvalidArgumentError(
                where,
                f"feature view {view.name!r} is declared twice with different definitions",
            )
    return list(chosen.values())

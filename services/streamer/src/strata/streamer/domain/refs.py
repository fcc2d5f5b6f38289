"""Feature references, ``"<view>:<feature>"``, as GetOnlineFeatures names its columns."""

from __future__ import annotations

from dataclasses import dataclass

from strata.core.errors import InvalidArgumentError


@dataclass(frozen=True)
class FeatureRef:
    """One requested feature: the view it belongs to and its name there."""

    view: str
    feature: str


def parse_refs(refs: list[str]) -> list[FeatureRef]:
    """The references in request order; INVALID_ARGUMENT naming the malformed one."""
    if not refs:
        raise InvalidArgumentError("features", 'is empty: name features as "<view>:<feature>"')
    parsed = []
    for position, ref in enumerate(refs):
        view, colon, feature = ref.partition(":")
        if not colon or not view or not feature or ":" in feature:
            raise InvalidArgumentError(
                f"features[{position}]", f'{ref!r} is not a reference "<view>:<feature>"'
            )
        parsed.append(FeatureRef(view, feature))
    return parsed


def views_of(refs: list[FeatureRef]) -> list[str]:
    """The distinct views of ``refs``, in order of first mention."""
    return list(dict.fromkeys(ref.view for ref in refs))

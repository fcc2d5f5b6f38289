"""Prediction ids: random version 4 UUIDs, as ``str(uuid.uuid4())`` writes them."""

from __future__ import annotations

import uuid

from strata.gateway.predict import prediction_ids


def test_ids_are_distinct_version_4_uuids_in_their_canonical_text() -> None:
    ids = prediction_ids(2_000)
    assert len(set(ids)) == len(ids) == 2_000
    for text in ids:
        parsed = uuid.UUID(text)
        assert parsed.version == 4
        assert parsed.variant == uuid.RFC_4122
        assert str(parsed) == text


def test_every_variant_digit_and_random_digit_occurs() -> None:
    """The fixed digits are the only fixed ones: the rest stay random."""
    ids = prediction_ids(2_000)
    assert {text[19] for text in ids} == set("89ab")
    assert {text[14] for text in ids} == {"4"}
    assert {text[0] for text in ids} == set("0123456789abcdef")
    assert {text[15] for text in ids} == set("0123456789abcdef")

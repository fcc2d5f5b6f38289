"""Whether two engines gave the same training set: label by label, value by value."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc


@dataclass(frozen=True)
class Comparison:
    """How a peer's training set differs from ours."""

    differing: dict[str, int]
    """Per feature, labels present on both sides whose values differ."""
    missing: int
    """Labels in ours that the peer's answer leaves out."""
    missing_null: int
    """Of those, labels our answer has no value for (every feature null)."""
    extra: int
    """Labels in the peer's answer that ours lacks (or repeats of one label)."""

    @property
    def identical(self) -> bool:
        return not (self.missing or self.extra or any(self.differing.values()))


def compare(ours: pa.Table, theirs: pa.Table, features: Sequence[str]) -> Comparison:
    """Pair the rows by ``label_id`` and compare each feature exactly.

    Two nulls agree; a null against a value, or two different values, do not.
    Exactly, because every engine reads the same numbers from the same Parquet
    file and none computes on them (a peer's integers that came back as floats,
    as pandas makes them when a column has nulls, are cast to our type first).
    """
    left = ours.select(["label_id", *features])
    right = theirs.select(["label_id", *features])
    extra = right.num_rows - len(pc.unique(right.column("label_id")))
    right = right.group_by("label_id", use_threads=False).aggregate(
        [(name, "first") for name in features]
    )
    right = pa.table(
        {"label_id": right.column("label_id")}
        | {name: right.column(f"{name}_first") for name in features}
    )
    left = left.append_column("__ours", pa.repeat(True, left.num_rows))
    right = right.append_column("__theirs", pa.repeat(True, right.num_rows))
    joined = left.join(right, "label_id", join_type="full outer", right_suffix=".peer")
    paired = pc.and_(pc.is_valid(joined.column("__ours")), pc.is_valid(joined.column("__theirs")))
    unmatched = joined.filter(pc.is_null(joined.column("__theirs")))
    all_null = functools.reduce(pc.and_, [pc.is_null(unmatched.column(n)) for n in features])
    both = joined.filter(paired)
    return Comparison(
        differing={name: _differing(both, name) for name in features},
        missing=unmatched.num_rows,
        missing_null=int(pc.sum(all_null).as_py() or 0),
        extra=extra + int(pc.sum(pc.is_null(joined.column("__ours"))).as_py() or 0),
    )


def _differing(both: pa.Table, name: str) -> int:
    a = both.column(name)
    b = both.column(f"{name}.peer").cast(a.type)
    same = pc.fill_null(pc.equal(a, b), False)
    agree = pc.or_(same, pc.and_(pc.is_null(a), pc.is_null(b)))
    return int(pc.sum(pc.invert(agree)).as_py() or 0)

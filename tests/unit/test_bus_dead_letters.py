"""A dead letter keeps the record whole and says why it was given up on."""

from __future__ import annotations

from datetime import UTC, datetime

from aiokafka import ConsumerRecord
from google.protobuf.wrappers_pb2 import StringValue

from strata.api.common.v1.dead_letter_pb2 import DeadLetter
from strata.core.bus import dead_letter
from strata.core.envelope import seal


def _record(value: bytes | None, key: bytes | None = b"run-1") -> ConsumerRecord[bytes, bytes]:
    return ConsumerRecord(
        topic="strata.tasks.events",
        partition=2,
        offset=1234,
        timestamp=1_700_000_000_123,
        timestamp_type=0,
        key=key,
        value=value,
        checksum=None,
        serialized_key_size=len(key or b""),
        serialized_value_size=len(value or b""),
        headers=[("traceparent", b"00-abc"), ("x", b"1"), ("x", b"2")],
    )


def test_the_record_is_kept_byte_for_byte() -> None:
    failed_at = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
    letter = dead_letter(
        _record(b"\x00\xffjunk"),
        cause=DeadLetter.CAUSE_MALFORMED,
        reason="not an envelope",
        attempts=0,
        group="scheduler",
        consumer="scheduler/host-1",
        failed_at=failed_at,
    )

    assert letter.value == b"\x00\xffjunk"
    assert letter.key == b"run-1"
    assert [(h.key, h.value) for h in letter.headers] == [
        ("traceparent", b"00-abc"),
        ("x", b"1"),
        ("x", b"2"),
    ]
    assert (letter.topic, letter.partition, letter.offset) == ("strata.tasks.events", 2, 1234)
    assert letter.record_time.ToMilliseconds() == 1_700_000_000_123
    assert letter.failed_at.ToDatetime(tzinfo=UTC) == failed_at
    assert (letter.consumer_group, letter.consumer) == ("scheduler", "scheduler/host-1")
    assert (letter.event_id, letter.event_type) == ("", "")


def test_what_can_be_read_of_the_envelope_is_kept() -> None:
    envelope = seal(StringValue(value="x"), key="run-1", producer="p")
    envelope.ClearField("occurred_at")

    letter = dead_letter(
        _record(envelope.SerializeToString()),
        cause=DeadLetter.CAUSE_MALFORMED,
        reason="envelope is missing field(s): occurred_at",
        attempts=0,
        group="g",
        consumer="c",
    )

    assert letter.event_id == envelope.event_id
    assert letter.event_type == "google.protobuf.StringValue"


def test_a_record_without_key_or_value_still_makes_a_dead_letter() -> None:
    letter = dead_letter(
        _record(None, key=None),
        cause=DeadLetter.CAUSE_MALFORMED,
        reason="empty",
        attempts=0,
        group="g",
        consumer="c",
    )

    assert (letter.value, letter.key) == (b"", b"")

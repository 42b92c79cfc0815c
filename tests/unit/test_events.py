"""cdp/events.py: ``decode_ingest``, the first stop of every event, and its rules."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cdp.errors import EventRejected, EventTooLarge
from cdp.events import (
    MAX_TS_MS,
    MIN_TS_MS,
    StreamEvent,
    _common_time,
    decode_ingest,
    iso_ms,
    parse_time,
    parse_time_fully,
    stream_decoder,
    stream_encoder,
)
from cdp.settings import Settings

# 2025-10-04T10:45:00Z: shortly after the seed's three examples.
NOW = 1_759_574_700_000
LIMIT = 32 * 1024
SKEW = 300_000

SEED_IDENTIFY = {
    "eventId": "evt-123",
    "ts": "2025-10-04T10:30:00Z",
    "payload": {
        "type": "IDENTIFY",
        "userId": "user-123",
        "email": "user@example.com",
        "traits": {"name": "John Doe", "plan": "pro", "country": "US"},
    },
}
SEED_TRACK = {
    "eventId": "evt-456",
    "ts": "2025-10-04T10:35:00Z",
    "payload": {
        "type": "TRACK",
        "userId": "user-123",
        "name": "Feature Used",
        "properties": {"feature": "dashboard", "duration": 120},
    },
}
SEED_ALIAS = {
    "eventId": "evt-789",
    "ts": "2025-10-04T10:40:00Z",
    "payload": {"type": "ALIAS", "anonymousId": "anon-456", "userId": "user-123"},
}


def decode(body: Any, **kw: Any) -> StreamEvent:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    kw.setdefault("now_ms", NOW)
    kw.setdefault("max_event_bytes", LIMIT)
    kw.setdefault("max_future_skew_ms", SKEW)
    return decode_ingest(raw, **kw)


def with_payload(**changes: Any) -> dict[str, Any]:
    """The seed's IDENTIFY example with payload fields changed (None deletes one)."""
    payload = {**SEED_IDENTIFY["payload"], **changes}
    return {**SEED_IDENTIFY, "payload": {k: v for k, v in payload.items() if v is not None}}


def rejected(body: Any, *fragments: str, **kw: Any) -> str:
    with pytest.raises(EventRejected) as info:
        decode(body, **kw)
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, message
    return message


# ------------------------------------------------------------------ the seed's examples


def test_seed_identify_example():
    ev = decode(SEED_IDENTIFY, source="test")
    assert ev == StreamEvent(
        eventId="evt-123",
        ts=1_759_573_800_000,
        receivedAt=NOW,
        type="IDENTIFY",
        userId="user-123",
        email="user@example.com",
        traits={"name": "John Doe", "plan": "pro", "country": "US"},
        source="test",
    )
    assert iso_ms(ev.ts) == "2025-10-04T10:30:00.000Z"
    assert ev.identifiers() == ["user:user-123", "email:user@example.com"]


def test_seed_track_example():
    ev = decode(SEED_TRACK)
    assert (ev.eventId, ev.type, ev.name) == ("evt-456", "TRACK", "Feature Used")
    assert ev.ts == 1_759_573_800_000 + 5 * 60_000
    assert ev.properties == {"feature": "dashboard", "duration": 120}
    assert ev.traits is None


def test_seed_alias_example():
    ev = decode(SEED_ALIAS)
    assert (ev.type, ev.userId, ev.anonymousId) == ("ALIAS", "user-123", "anon-456")
    assert ev.identifiers() == ["user:user-123", "anon:anon-456"]


def test_stream_form_round_trips_as_json():
    ev = decode(SEED_IDENTIFY)
    raw = stream_encoder.encode(ev)
    assert json.loads(raw)["eventId"] == "evt-123"  # readable in redis-cli
    assert stream_decoder.decode(raw) == ev


def test_ts_with_an_offset_and_milliseconds_is_converted_to_utc_epoch_ms():
    body = {**SEED_IDENTIFY, "ts": "2025-10-04T12:30:00.250+02:00"}
    assert decode(body).ts == 1_759_573_800_250


def test_unknown_top_level_and_payload_fields_are_tolerated():
    body = {**with_payload(context={"ip": "1.2.3.4"}), "extra": 1}
    assert decode(body).eventId == "evt-123"


# ----------------------------------------------------------------------- eventId


@pytest.mark.parametrize(
    "body",
    [
        {**SEED_IDENTIFY, "eventId": ""},
        {**SEED_IDENTIFY, "eventId": "   "},
        {**SEED_IDENTIFY, "eventId": "x" * 129},
        {k: v for k, v in SEED_IDENTIFY.items() if k != "eventId"},
        {**SEED_IDENTIFY, "eventId": 123},
    ],
    ids=["empty", "whitespace", "129-chars", "missing", "not-a-string"],
)
def test_bad_event_id_is_rejected_naming_the_field(body):
    rejected(body, "eventId")


def test_event_id_of_128_chars_is_accepted():
    assert decode({**SEED_IDENTIFY, "eventId": "x" * 128}).eventId == "x" * 128


# ------------------------------------------------------------------- identifiers


@pytest.mark.parametrize(
    "payload",
    [
        {"type": "IDENTIFY"},
        {"type": "IDENTIFY", "userId": "", "anonymousId": " ", "email": None},
        {"type": "TRACK", "name": "Clicked"},
    ],
    ids=["none", "blank", "track"],
)
def test_no_identifier_is_rejected_naming_the_fields(payload):
    rejected({**SEED_IDENTIFY, "payload": payload}, "userId", "anonymousId", "email")


def test_only_placeholder_identifiers_are_rejected():
    body = {**SEED_IDENTIFY, "payload": {"type": "IDENTIFY", "userId": "null", "email": "0"}}
    rejected(body, "userId", "placeholder")


def test_configured_extra_placeholders_are_rejected_too():
    body = {**SEED_IDENTIFY, "payload": {"type": "IDENTIFY", "userId": "guest"}}
    assert decode(body).userId == "guest"
    blocked = Settings(blocked_identifiers="guest").blocked_values
    rejected(body, "placeholder", blocked=blocked)


def test_identifier_longer_than_512_is_rejected():
    rejected(with_payload(userId="u" * 513), "payload.userId")


# ------------------------------------------------------------------------ types


@pytest.mark.parametrize("name", [None, "", "   "], ids=["missing", "empty", "blank"])
def test_track_without_a_name_is_rejected(name):
    payload = {"type": "TRACK", "userId": "user-123"}
    if name is not None:
        payload["name"] = name
    rejected({**SEED_TRACK, "payload": payload}, "TRACK", "payload.name")


def test_track_name_longer_than_256_is_rejected():
    rejected(
        {**SEED_TRACK, "payload": {**SEED_TRACK["payload"], "name": "n" * 257}}, "payload.name"
    )


@pytest.mark.parametrize(
    "payload",
    [
        {"type": "ALIAS", "userId": "user-123"},
        {"type": "ALIAS", "anonymousId": "anon-456"},
        {"type": "ALIAS", "anonymousId": "  ", "userId": "user-123"},
        {"type": "ALIAS", "email": "a@b.c", "userId": "user-123"},
    ],
    ids=["no-anon", "no-user", "blank-anon", "email-instead-of-anon"],
)
def test_alias_needs_both_anonymous_id_and_user_id(payload):
    rejected({**SEED_ALIAS, "payload": payload}, "ALIAS", "payload.anonymousId", "payload.userId")


@pytest.mark.parametrize("kind", ["PAGE", "identify", "", 3])
def test_unknown_payload_type_is_rejected(kind):
    rejected(with_payload(type=kind), "payload.type")


def test_missing_payload_is_rejected():
    rejected({"eventId": "e", "ts": "2025-10-04T10:30:00Z"}, "payload")


@pytest.mark.parametrize("traits", [["plan", "pro"], "plan=pro", 5])
def test_traits_that_are_not_an_object_are_rejected(traits):
    rejected(with_payload(traits=traits), "payload.traits")


def test_properties_that_are_not_an_object_are_rejected():
    rejected({**SEED_TRACK, "payload": {**SEED_TRACK["payload"], "properties": [1]}}, "properties")


# --------------------------------------------------------------------------- ts


def test_missing_ts_is_rejected():
    rejected({k: v for k, v in SEED_IDENTIFY.items() if k != "ts"}, "ts")


def test_naive_ts_is_rejected():
    rejected({**SEED_IDENTIFY, "ts": "2025-10-04T10:30:00"}, "`ts`", "timezone")


@pytest.mark.parametrize("ts", ["yesterday", "2025-13-40T10:00:00Z", "", 1_759_573_800])
def test_ts_that_is_not_a_date_is_rejected(ts):
    rejected({**SEED_IDENTIFY, "ts": ts}, "`ts`")


def test_ts_up_to_max_future_skew_ahead_is_accepted():
    at_limit = iso_ms(NOW + SKEW)
    assert decode({**SEED_IDENTIFY, "ts": at_limit}).ts == NOW + SKEW


def test_ts_beyond_max_future_skew_is_rejected():
    message = rejected({**SEED_IDENTIFY, "ts": iso_ms(NOW + SKEW + 1)}, "`ts`", "future")
    assert "300s" in message
    # The limit is the given one, not a constant.
    assert decode({**SEED_IDENTIFY, "ts": iso_ms(NOW + SKEW + 1)}, max_future_skew_ms=SKEW + 1)


def test_ts_in_the_past_is_accepted_here():
    """Lateness is judged by the workers' watermark, not at ingest."""
    assert decode({**SEED_IDENTIFY, "ts": "2020-01-01T00:00:00Z"}).ts == 1_577_836_800_000


def test_ts_keeps_its_exact_millisecond():
    assert decode({**SEED_IDENTIFY, "ts": "2004-01-10T14:34:25.554Z"}).ts == 1_073_745_265_554


# ------------------------------------------------------------------------- body


@pytest.mark.parametrize("body", [b"{not json", b'{"eventId": "e"', b"\xff\xfe", b"nul"])
def test_body_that_is_not_json_is_rejected(body):
    rejected(body, "JSON")


@pytest.mark.parametrize("body", [b"", b"   \n"])
def test_empty_body_is_rejected(body):
    rejected(body, "empty")


@pytest.mark.parametrize("body", [b"[]", json.dumps([SEED_IDENTIFY]).encode(), b'"x"', b"42"])
def test_body_that_is_not_a_json_object_is_rejected(body):
    rejected(body, "object")


def padded(size: int) -> bytes:
    """The seed's IDENTIFY, padded with a trait to exactly ``size`` bytes."""
    base = json.dumps(with_payload(traits={"pad": ""}), separators=(",", ":")).encode()
    body = base.replace(b'"pad":""', b'"pad":"' + b"x" * (size - len(base)) + b'"')
    assert len(body) == size
    return body


def test_event_of_exactly_the_size_limit_is_accepted():
    assert len(decode(padded(LIMIT)).traits["pad"]) > 30_000


def test_event_over_the_size_limit_is_too_large():
    with pytest.raises(EventTooLarge) as info:
        decode(padded(LIMIT + 1))
    assert isinstance(info.value, EventRejected)
    assert info.value.status == 413
    assert str(LIMIT) in str(info.value)


def test_size_limit_is_the_given_one():
    with pytest.raises(EventTooLarge):
        decode(SEED_IDENTIFY, max_event_bytes=100)


@given(st.integers(min_value=MIN_TS_MS, max_value=MAX_TS_MS))
def test_iso_ms_equals_the_datetime_formatting_it_caches(ms: int) -> None:
    dt = datetime.fromtimestamp(ms / 1000, tz=UTC)
    assert iso_ms(ms) == dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


def test_iso_ms_at_the_ends_of_the_range() -> None:
    assert iso_ms(MIN_TS_MS) == "1970-01-01T00:00:00.000Z"
    assert iso_ms(MAX_TS_MS) == "9999-12-31T23:59:59.999Z"


# -- parse_time's shortcut for the common form (cdp.events._common_time) -------------

_DIGITS = st.text(alphabet="0123456789", min_size=1, max_size=7)
_TIMES = st.builds(
    lambda y, mo, d, t, h, mi, s, frac, zone: f"{y}-{mo}-{d}{t}{h}:{mi}:{s}{frac}{zone}",
    st.sampled_from(["1970", "1971", "0001", "1969", "2025", "9998", "9999", "999", "20250"]),
    st.sampled_from(["01", "02", "04", "12", "13", "00", "1"]),
    st.sampled_from(["01", "02", "28", "29", "30", "31", "32", "00"]),
    st.sampled_from(["T", "t", " "]),
    st.sampled_from(["00", "09", "23", "24"]),
    st.sampled_from(["00", "59", "60"]),
    st.sampled_from(["00", "59", "60", "5"]),
    st.one_of(st.just(""), _DIGITS.map(lambda d: "." + d), st.just(".")),
    st.sampled_from(["Z", "z", "+00:00", "-05:30", ""]),
)


def _outcome(parse: Any, raw: str, event_time: bool) -> object:
    try:
        return parse(raw, "ts", event_time=event_time)
    except EventRejected as exc:
        return ("rejected", str(exc))


@given(raw=_TIMES, event_time=st.booleans())
def test_parse_time_answers_as_the_full_rules_do(raw: str, event_time: bool) -> None:
    """The shortcut changes nothing: the same milliseconds, the same refusal."""
    assert _outcome(parse_time, raw, event_time) == _outcome(parse_time_fully, raw, event_time)


def test_parse_time_takes_the_shortcut_for_the_common_forms() -> None:
    for raw in ("2025-10-04T10:30:00Z", "2025-10-04T10:30:00.123Z", "2025-10-04T10:30:00.123456Z"):
        assert _common_time(raw) == parse_time_fully(raw, "ts")
    for raw in ("1970-01-01T00:00:00Z", "2025-02-30T00:00:00Z", "2025-10-04T10:30:00+00:00"):
        assert _common_time(raw) is None

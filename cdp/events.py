"""Wire formats and validation: the first stop of an event.

``IngestEvent`` is the seed's body for ``POST /cdp/ingest``. ``decode_ingest`` turns
raw bytes into a validated ``StreamEvent``: the normalised form that goes on a partition
stream and that the workers read back (JSON, so ``XRANGE`` in redis-cli is readable).
Every rejection raises ``EventRejected`` whose message names the field and the rule.
``IngestEvent`` and ``Payload`` are also the OpenAPI document's schemas of that body
(cdp/api/openapi.py): their docstrings, fields' Meta and ``json_schema_extra`` say there
what ``validate_rules`` checks; Meta that only documents leaves decoding unchanged.
"""

from __future__ import annotations

import functools
import re
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, ClassVar, Literal

import msgspec

from cdp.errors import EventRejected, EventTooLarge
from cdp.identity import BLOCKED_VALUES, typed_identifiers

EventType = Literal["IDENTIFY", "TRACK", "ALIAS"]
Identifier = Annotated[str, msgspec.Meta(max_length=512)]

MAX_TRAITS = 1000

# Event times are kept as epoch milliseconds and fixed-width ISO strings: 1970 to 9999.
MIN_TS_MS = 0
MAX_TS_MS = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z

# The grammar the OpenAPI document states, written once: each pattern below is also a
# ``pattern`` of cdp/api/openapi.json (tests/unit/test_contract.py keeps them equal).
# Only constructs that mean the same in Python and in ECMA-262 (JSON Schema's regex
# dialect): explicit classes, never \d, \s or \w, which differ; matched in full here.
#
# Python's whitespace (str.strip, str.isspace): "blank" means only these characters.
WHITESPACE = r"[\t-\r\x1c-\x20\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]"
# A string holding something else than whitespace (searched, like JSON Schema does).
NOT_BLANK = "[^" + WHITESPACE[1:]
_CLOCK = (
    r"[Tt]([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](\.[0-9]+)?"
    r"([Zz]|[+-]([01][0-9]|2[0-3]):[0-5][0-9])$"
)
_MONTH_DAY = r"(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])"
# RFC 3339 with a zone, years 0001 to 9999 (sentAt, originalTimestamp).
DATE_TIME = r"^(000[1-9]|00[1-9][0-9]|0[1-9][0-9]{2}|[1-9][0-9]{3})-" + _MONTH_DAY + _CLOCK
# The same from 1970-01-02 to 9999-12-30, so that every zone offset stays inside the
# range event times are kept in (ts, timestamp).
EVENT_TIME = (
    r"^(1970-01-(0[2-9]|[12][0-9]|3[01])|1970-(0[2-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])"
    r"|(197[1-9]|19[89][0-9]|[2-8][0-9]{3}|9[0-8][0-9]{2}|99[0-8][0-9]|999[0-8])-"
    + _MONTH_DAY
    + r"|9999-(0[1-9]|1[01])-(0[1-9]|[12][0-9]|3[01])|9999-12-(0[1-9]|[12][0-9]|30))"
    + _CLOCK
)


def _described(description: str, **schema: Any) -> msgspec.Meta:
    """Meta that only documents (the OpenAPI schema): decoding is unchanged."""
    return msgspec.Meta(description=description, extra_json_schema=schema or None)


_USABLE = {"$ref": "#/components/schemas/Usable"}


def _present(*fields: str) -> dict[str, Any]:
    return {name: {"type": "string", "pattern": NOT_BLANK} for name in fields}


class Payload(msgspec.Struct, forbid_unknown_fields=False):
    """At least one of userId, anonymousId and email must be usable (see Usable); TRACK
    needs a name, ALIAS both anonymousId and userId (not blank)."""

    # The rules across fields (validate_rules), for the OpenAPI schema (cdp/api/openapi.py).
    json_schema_extra: ClassVar[dict[str, Any]] = {
        "allOf": [
            {
                "anyOf": [
                    {"required": [name], "properties": {name: _USABLE}}
                    for name in ("userId", "anonymousId", "email")
                ]
            },
            {
                "anyOf": [
                    {"properties": {"type": {"enum": ["IDENTIFY"]}}},
                    {
                        "required": ["name"],
                        "properties": {"type": {"enum": ["TRACK"]}, **_present("name")},
                    },
                    {
                        "required": ["anonymousId", "userId"],
                        "properties": {
                            "type": {"enum": ["ALIAS"]},
                            **_present("anonymousId", "userId"),
                        },
                    },
                ]
            },
        ]
    }

    type: EventType
    userId: Annotated[Identifier, _described("Identifier user:<userId>.")] | None = None
    anonymousId: Annotated[Identifier, _described("Identifier anon:<anonymousId>.")] | None = None
    email: (
        Annotated[Identifier, _described("Identifier email:<trimmed, lower-cased email>.")] | None
    ) = None
    traits: (
        Annotated[
            dict[str, Any],
            _described(
                "Trait name -> any JSON value, merged per trait by Last-Write-Wins on"
                " (ts, eventId); null deletes the trait (a tombstone that keeps its ts).",
                maxProperties=MAX_TRAITS,
            ),
        ]
        | None
    ) = None
    name: (
        Annotated[
            str,
            msgspec.Meta(max_length=256),
            _described(
                "The event name; required (not blank) for TRACK. Names starting with $ are"
                " reserved.",
                pattern="^([^$]|$)",
            ),
        ]
        | None
    ) = None
    properties: (
        Annotated[
            dict[str, Any], _described("Free-form TRACK properties; kept in the stream entry.")
        ]
        | None
    ) = None


class IngestEvent(msgspec.Struct):
    """One event, in the seed's format."""

    eventId: Annotated[
        str,
        msgspec.Meta(min_length=1, max_length=128),
        _described(
            "Unique per event, not only whitespace; a repeat within dedup-ttl changes nothing"
            " (deduplicated per partition).",
            example="evt-B",
            pattern=NOT_BLANK,
        ),
    ]
    # EVENT_TIME, checked by parse_time (msgspec's own parser accepts more)
    ts: Annotated[str, msgspec.Meta(extra_json_schema={"$ref": "#/components/schemas/EventTime"})]
    payload: Payload


class StreamEvent(msgspec.Struct, omit_defaults=True):
    """One event as stored in ``cdp:events:{pN}`` (field ``e``, or an item of ``b``).

    ``ts`` is the event time in epoch milliseconds, ``receivedAt`` when the API accepted
    it (the clock of the API), which is what lateness is judged against.
    """

    eventId: str
    ts: int
    receivedAt: int
    type: str
    userId: str | None = None
    anonymousId: str | None = None
    email: str | None = None
    traits: dict[str, Any] | None = None
    name: str | None = None
    properties: dict[str, Any] | None = None
    source: str | None = None
    # "import": historical backfill, never dropped for lateness.
    mode: str | None = None

    def identifiers(self, blocked: frozenset[str] = BLOCKED_VALUES) -> list[str]:
        return typed_identifiers(self.userId, self.anonymousId, self.email, blocked)


_ingest_decoder = msgspec.json.Decoder(IngestEvent)
stream_encoder = msgspec.json.Encoder()
stream_decoder = msgspec.json.Decoder(StreamEvent)
# Field ``b`` of a stream entry holding several events of one request: a JSON array.
stream_batch_decoder = msgspec.json.Decoder(list[StreamEvent])


def entry_events(fields: dict[bytes, bytes]) -> list[StreamEvent] | None:
    """The events of a partition stream entry: field ``e`` (one event) or ``b`` (a JSON
    array of several); None when it has neither (deleted under the reader).
    Raises msgspec.DecodeError when it cannot be decoded."""
    raw = fields.get(b"e")
    if raw is not None:
        return [stream_decoder.decode(raw)]
    many = fields.get(b"b")
    return None if many is None else stream_batch_decoder.decode(many)


def iso_ms(ms: int) -> str:
    """Fixed-width UTC ISO-8601 (``2025-10-04T10:30:00.000Z``): sorts like the time."""
    return f"{_iso_second(ms // 1000)}{ms % 1000:03d}Z"


@functools.lru_cache(maxsize=4096)
def _iso_second(seconds: int) -> str:
    """``2025-10-04T10:30:00.`` of a whole second since the epoch (events of one batch
    share a few seconds: formatted once each, the hot path of the apply's encoding)."""
    return (_EPOCH + timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%S.")


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def to_ms(dt: datetime) -> int:
    """Exact milliseconds since the epoch (no float rounding), sub-milliseconds dropped."""
    return (dt - _EPOCH) // timedelta(milliseconds=1)


def rejection_message(exc: msgspec.ValidationError | msgspec.DecodeError) -> str:
    """msgspec says ``Expected `str` - at `$.payload.name```; we say it the same way."""
    text = str(exc)
    if isinstance(exc, msgspec.ValidationError):
        return text.replace("`$.", "`")
    return f"body is not valid JSON: {text}"


_NOT_BLANK = re.compile(NOT_BLANK)
_DATE_TIME = re.compile(DATE_TIME)
_EVENT_TIME = re.compile(EVENT_TIME)
_NAIVE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}(:[0-9]{2}(\.[0-9]+)?)?")


def is_blank(value: str) -> bool:
    return _NOT_BLANK.search(value) is None


# What SDKs send nearly always: UTC, upper-case T and Z, no fraction or 3 or 6 digits,
# a date inside both ranges (1970-01-02 to 9998-12-31). Such a string is read directly
# (one regex, integers, the day's midnight cached); anything else, or a field out of
# range, takes the full rules (parse_time_fully), which say what is wrong with it.
_COMMON_TIME = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]{3}|\.[0-9]{6})?Z"
)


@functools.lru_cache(maxsize=1024)
def _day_ms(date: str) -> int | None:
    """``YYYY-MM-DD`` -> its midnight UTC in epoch ms, None outside the common range."""
    if not "1970-01-02" <= date <= "9998-12-31":
        return None
    try:
        return to_ms(datetime(int(date[:4]), int(date[5:7]), int(date[8:10]), tzinfo=UTC))
    except ValueError:  # a day the month does not have
        return None


def _common_time(raw: str) -> int | None:
    if _COMMON_TIME.fullmatch(raw) is None or (day := _day_ms(raw[:10])) is None:
        return None
    hour, minute, second = int(raw[11:13]), int(raw[14:16]), int(raw[17:19])
    if hour > 23 or minute > 59 or second > 59:
        return None
    # Sub-milliseconds are dropped, as to_ms does: the first 3 digits of the fraction.
    millis = int(raw[20:23]) if len(raw) > 20 else 0
    return day + ((hour * 60 + minute) * 60 + second) * 1000 + millis


def parse_time(raw: Any, field: str, *, event_time: bool = True) -> int:
    """An RFC 3339 time with a zone -> epoch ms; EventRejected names ``field`` and the rule.

    ``event_time``: within EVENT_TIME's range (an event's own time); else DATE_TIME's.
    """
    if isinstance(raw, str) and (common := _common_time(raw)) is not None:
        return common
    return parse_time_fully(raw, field, event_time=event_time)


def parse_time_fully(raw: Any, field: str, *, event_time: bool = True) -> int:
    """``parse_time`` by the full rules, without its shortcut for the common form."""
    if not isinstance(raw, str):
        raise EventRejected(f"`{field}` must be an RFC 3339 time string like 2025-10-04T10:30:00Z")
    if _NAIVE.fullmatch(raw):
        raise EventRejected(f"`{field}` needs a timezone (Z or +hh:mm): {raw!r}")
    if not _DATE_TIME.fullmatch(raw):
        raise EventRejected(f"`{field}` is not an RFC 3339 time like 2025-10-04T10:30:00Z: {raw!r}")
    if event_time and not _EVENT_TIME.fullmatch(raw):
        raise EventRejected(f"`{field}` must be between 1970-01-02 and 9999-12-30")
    try:
        parsed = datetime.fromisoformat(raw[:-1] + "+00:00" if raw[-1] in "Zz" else raw)
    except ValueError as exc:  # a day the month does not have
        raise EventRejected(f"`{field}` is not a valid time: {exc}") from None
    return to_ms(parsed)


def check_time_range(ts_ms: int, field: str = "ts") -> None:
    if not MIN_TS_MS <= ts_ms <= MAX_TS_MS:
        raise EventRejected(f"`{field}` must be between 1970-01-01 and 9999-12-31 (UTC)")


def validate_rules(
    event_id: str,
    ts_ms: int,
    payload: Payload,
    now_ms: int,
    max_future_skew_ms: int,
    blocked: frozenset[str] = BLOCKED_VALUES,
) -> None:
    """The rules msgspec's types cannot say (DESIGN.md, seed's "Validation Rules")."""
    if is_blank(event_id):
        raise EventRejected("`eventId` must not be empty or whitespace")
    if all(is_blank(v or "") for v in (payload.userId, payload.anonymousId, payload.email)):
        raise EventRejected(
            "at least one of `payload.userId`, `payload.anonymousId` or `payload.email` is required"
        )
    if payload.traits is not None and len(payload.traits) > MAX_TRAITS:
        raise EventRejected(f"`payload.traits`: at most {MAX_TRAITS} traits per event")
    if not typed_identifiers(payload.userId, payload.anonymousId, payload.email, blocked):
        raise EventRejected(
            "no usable identifier: `payload.userId`, `payload.anonymousId` and `payload.email` "
            "hold only placeholder values (such as 'null', 'undefined', '0', 'anonymous')"
        )
    if payload.type == "TRACK" and is_blank(payload.name or ""):
        raise EventRejected("TRACK events require a `payload.name`")
    if (payload.name or "").startswith("$"):
        raise EventRejected("`payload.name`: names starting with '$' are reserved")
    if payload.type == "ALIAS" and (
        is_blank(payload.anonymousId or "") or is_blank(payload.userId or "")
    ):
        raise EventRejected("ALIAS events require both `payload.anonymousId` and `payload.userId`")
    check_time_range(ts_ms)
    if ts_ms > now_ms + max_future_skew_ms:
        raise EventRejected(
            f"`ts` is {(ts_ms - now_ms) // 1000}s in the future; at most "
            f"{max_future_skew_ms // 1000}s of clock skew is accepted"
        )


def decode_ingest(
    body: bytes,
    *,
    now_ms: int,
    max_event_bytes: int,
    max_future_skew_ms: int,
    source: str | None = None,
    blocked: frozenset[str] = BLOCKED_VALUES,
) -> StreamEvent:
    """Validate one ``POST /cdp/ingest`` body; raise EventRejected with the reason."""
    if len(body) > max_event_bytes:
        raise EventTooLarge(
            f"event is {len(body)} bytes; the limit is {max_event_bytes} bytes per event"
        )
    if not body.strip():
        raise EventRejected("body is empty; send one event as a JSON object")
    try:
        event = _ingest_decoder.decode(body)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise EventRejected(rejection_message(exc)) from None
    except RecursionError:
        raise EventRejected("body is nested too deeply") from None
    payload = event.payload
    ts_ms = parse_time(event.ts, "ts")
    validate_rules(event.eventId, ts_ms, payload, now_ms, max_future_skew_ms, blocked)
    return StreamEvent(
        eventId=event.eventId,
        ts=ts_ms,
        receivedAt=now_ms,
        type=payload.type,
        userId=payload.userId,
        anonymousId=payload.anonymousId,
        email=payload.email,
        traits=payload.traits,
        name=payload.name,
        properties=payload.properties,
        source=source,
    )

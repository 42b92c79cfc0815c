"""Segment's tracking spec → our events: the mapping behind the ``/v1/*`` routes.

Segment and RudderStack SDKs send ``identify``, ``track``, ``alias``, ``page``,
``screen`` and ``group`` calls, alone or in a ``batch``. ``to_stream_event`` turns one
call (with the batch's ``context``/``integrations`` already merged in) into a
``StreamEvent``:

- ``messageId`` → eventId (so SDK retries are deduplicated); ``userId``,
  ``anonymousId``; the email identifier from ``traits.email`` (or ``context.traits``);
- traits: ``traits`` (identify), else ``context.traits``; group: the profile gets the
  traits ``groupId`` and ``groupTraits`` (LWW like any trait);
- ``event`` → name, ``properties`` kept; alias: ``previousId`` is the anonymousId side;
- page and screen are activity: they move lastSeen and are counted under ``$page`` /
  ``$screen`` (not in ``$track``);
- time, as Segment corrects client clocks: ``receivedAt − (sentAt −
  originalTimestamp)`` when both are sent (and the result is a time events can have),
  else ``timestamp``, else receipt time. Every time sent must be RFC 3339 with a zone
  (``timestamp`` an event time: cdp.events.EVENT_TIME), even one the correction ignores.

Every problem raises ``CallRejected`` with a Segment-style ``code`` and a message
naming the field.
"""

from __future__ import annotations

import uuid
from typing import Any

from cdp.errors import EventRejected
from cdp.events import MAX_TRAITS, MAX_TS_MS, MIN_TS_MS, StreamEvent, is_blank, parse_time
from cdp.identity import BLOCKED_VALUES, typed_identifiers

TYPES = {
    "identify": "IDENTIFY",
    "track": "TRACK",
    "alias": "ALIAS",
    "page": "PAGE",
    "screen": "SCREEN",
    "group": "GROUP",
}
SHORT = {"i": "identify", "t": "track", "a": "alias", "p": "page", "s": "screen", "g": "group"}
MAX_ID = 512
MAX_SAFE_INTEGER = 2**53 - 1


class CallRejected(EventRejected):
    """One call (or the whole request) is invalid; ``code`` as Segment's API says it."""

    def __init__(self, message: str, code: str = "invalid_request", status: int = 400) -> None:
        super().__init__(message)
        self.code = code
        self.status = status


def _time(raw: Any, field: str, *, event_time: bool = False) -> int | None:
    if raw is None:
        return None
    try:
        return parse_time(raw, field, event_time=event_time)
    except EventRejected as exc:
        raise CallRejected(str(exc)) from None


def event_time(call: dict[str, Any], sent_at: int | None, received_at: int) -> int:
    """Segment's clock-skew correction, then ``timestamp``, then receipt time.

    A correction that lands outside the times events can have (clocks years apart)
    says nothing about when the event happened: the next source is used instead.
    """
    timestamp = _time(call.get("timestamp"), "timestamp", event_time=True)
    original = _time(call.get("originalTimestamp"), "originalTimestamp")
    if original is not None and sent_at is not None:
        corrected = received_at - (sent_at - original)
        if MIN_TS_MS <= corrected <= MAX_TS_MS:
            return corrected
    return timestamp if timestamp is not None else received_at


def _string(call: dict[str, Any], field: str) -> str | None:
    value = call.get(field)
    if value is None:
        return None
    if type(value) is str and len(value) <= MAX_ID:  # the usual case, checked first
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        # SDKs happily send numeric ids: used as their decimal text, within the numbers
        # JavaScript holds exactly, where 5.0 is 5 (and -0.0 is 0).
        if abs(value) > MAX_SAFE_INTEGER:
            raise CallRejected(
                f"`{field}`: a number must be within ±{MAX_SAFE_INTEGER}; "
                "send larger ids as strings"
            )
        value = str(int(value) if isinstance(value, float) and value.is_integer() else value)
    if not isinstance(value, str):
        raise CallRejected(f"`{field}` must be a string")
    if len(value) > MAX_ID:
        raise CallRejected(f"`{field}` is longer than {MAX_ID} characters")
    return value


def _object(value: Any, field: str) -> dict[str, Any] | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise CallRejected(f"`{field}` must be a JSON object")
    return value


def to_stream_event(
    call: dict[str, Any],
    kind: str | None,
    *,
    received_at: int,
    sent_at: int | None,
    source: str,
    mode: str | None = None,
    blocked: frozenset[str] = BLOCKED_VALUES,
) -> StreamEvent:
    """One Segment call -> StreamEvent; ``kind`` comes from the path, else ``call.type``."""
    if not isinstance(call, dict):
        raise CallRejected("each call must be a JSON object")
    kind = kind or call.get("type")
    if not isinstance(kind, str) or kind not in TYPES:
        raise CallRejected(f"`type` must be one of {', '.join(TYPES)}, got {kind!r}")
    context = _object(call.get("context"), "context") or {}
    traits = _object(call.get("traits"), "traits")
    context_traits = _object(context.get("traits"), "context.traits")
    properties = _object(call.get("properties"), "properties")
    user_id = _string(call, "userId")
    anonymous_id = _string(call, "anonymousId")
    name = None
    if kind == "alias":
        previous = _string(call, "previousId")
        if not previous or not user_id:
            raise CallRejected("alias needs both `previousId` and `userId`")
        anonymous_id = previous
    if kind == "track":
        name = _string(call, "event")
        if not name or is_blank(name):
            raise CallRejected("track needs an `event` name")
        if name.startswith("$"):
            raise CallRejected("`event`: names starting with '$' are reserved")
    if kind in ("page", "screen"):
        name = _string(call, "name")
    profile_traits = (
        {**(context_traits or {}), **(traits or {})}
        if (kind == "identify" or context_traits)
        else None
    )
    if kind == "group":
        group_id = _string(call, "groupId")
        if not group_id:
            raise CallRejected("group needs a `groupId`")
        profile_traits = {
            **(context_traits or {}),
            "groupId": group_id,
            "groupTraits": traits or {},
        }
    for field, given in (("traits", traits), ("context.traits", context_traits)):
        if given is not None and len(given) > MAX_TRAITS:
            raise CallRejected(f"`{field}`: at most {MAX_TRAITS} traits")
    email = (profile_traits or {}).get("email")
    email = email if isinstance(email, str) and email.strip() else None
    if not typed_identifiers(user_id, anonymous_id, email, blocked):
        raise CallRejected("every call needs a usable `userId` or `anonymousId`")
    message_id = _string(call, "messageId") or f"cdp-{uuid.uuid4()}"
    if len(message_id) > 128:
        raise CallRejected("`messageId` is longer than 128 characters")
    return StreamEvent(
        eventId=message_id,
        ts=event_time(call, sent_at, received_at),
        receivedAt=received_at,
        type=TYPES[kind],
        userId=user_id,
        anonymousId=anonymous_id,
        email=email,
        traits=profile_traits,
        name=name,
        properties=properties,
        source=source,
        mode=mode,
    )

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
  originalTimestamp)`` when both are sent, else ``timestamp``, else receipt time.

Every problem raises ``CallRejected`` with a Segment-style ``code`` and a message
naming the field.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from cdp.errors import EventRejected
from cdp.events import MAX_TRAITS, StreamEvent, check_time_range, to_ms
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


class CallRejected(EventRejected):
    """One call (or the whole request) is invalid; ``code`` as Segment's API says it."""

    def __init__(self, message: str, code: str = "invalid_request", status: int = 400) -> None:
        super().__init__(message)
        self.code = code
        self.status = status


def _time(raw: Any, field: str) -> int | None:
    if raw is None:
        return None
    if not isinstance(raw, str):
        raise CallRejected(f"`{field}` must be an ISO-8601 string")
    try:
        parsed = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        raise CallRejected(f"`{field}` is not an ISO-8601 time: {raw!r}") from None
    if parsed.tzinfo is None:
        raise CallRejected(f"`{field}` needs a time zone (Z or +hh:mm): {raw!r}")
    return to_ms(parsed)


def event_time(call: dict[str, Any], sent_at: int | None, received_at: int) -> int:
    """Segment's clock-skew correction, then ``timestamp``, then receipt time."""
    original = _time(call.get("originalTimestamp"), "originalTimestamp")
    if original is not None and sent_at is not None:
        ts = received_at - (sent_at - original)
    else:
        timestamp = _time(call.get("timestamp"), "timestamp")
        ts = timestamp if timestamp is not None else received_at
    try:
        check_time_range(ts, "timestamp")
    except EventRejected as exc:
        raise CallRejected(str(exc)) from None
    return ts


def _string(call: dict[str, Any], field: str) -> str | None:
    value = call.get(field)
    if value is None:
        return None
    if isinstance(value, int | float) and not isinstance(value, bool):
        value = str(value)  # SDKs happily send numeric ids
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
        if not name or not name.strip():
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
    if profile_traits is not None and len(profile_traits) > MAX_TRAITS:
        raise CallRejected(f"at most {MAX_TRAITS} traits per call (traits and context.traits)")
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

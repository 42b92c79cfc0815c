"""The ingest routes' refusals, kept for the console: ``cdp:rejections``.

Every 4xx answered on ``POST /cdp/ingest`` or a ``/v1/*`` route (preflights aside), and
each call a ``/v1/batch`` or ``/v1/import`` answered 200 listed in ``rejected[]``, is
recorded by the API (``cdp.api.rejected``) as one entry of the stream
``cdp:rejections`` (XADD MAXLEN ~ ``rejections-maxlen``): when (``at``, ms), the
method and route, the status, the message the client got (``reason``), the write
key's source when it was known (never the key), and the body as read, cut at
``BODY_LIMIT`` bytes and decoded as UTF-8 with replacement (``truncated`` says when it
was cut). ``read_rejections`` pages through it newest first for
``GET /cdp/console/rejections``.

No write key is ever stored: a body's ``writeKey`` values (top level and in each
``batch[]`` call; a 401's body holds the wrong key tried) are replaced by
``"[redacted]"`` before it is cut (``redact_body``: re-encoded when the body parses as
JSON, else a regex on ``"writeKey": "..."``), the key in ``/v1/projects/<key>/settings``
too, and headers (HTTP Basic carries the key) are never stored. The route is cut at
``ROUTE_LIMIT`` characters.
"""

from __future__ import annotations

import json
import re
from typing import Any

import msgspec

from cdp import keys
from cdp.connect import Client
from cdp.errors import EventRejected
from cdp.streams import text

BODY_LIMIT = 2048  # bytes of the body kept
ROUTE_LIMIT = 200  # characters of the route kept
REDACTED = "[redacted]"
# A "writeKey" member in a body that is not JSON (or not an object): its string value,
# closed or cut, or any other scalar.
_WRITE_KEY = re.compile(rb'("writeKey"\s*:\s*)(?:"(?:[^"\\]|\\.)*"?|[^\s,}\]]*)')
_SETTINGS_ROUTE = re.compile(r"^(/v1/projects/)[^/]*")
ENTRY_ID = re.compile(r"^[0-9]{1,19}-[0-9]{1,19}$")  # below 2**64: what Redis parses


class Rejection(msgspec.Struct):
    """One refusal as ``GET /cdp/console/rejections`` shows it."""

    id: str
    at: int
    method: str
    route: str
    status: int
    reason: str
    source: str | None
    body: str
    truncated: bool


class RejectionPage(msgspec.Struct):
    rejections: list[Rejection]
    cursor: str


def _redact_call(call: Any) -> bool:
    """Replace ``call``'s writeKey in place; whether there was one."""
    if isinstance(call, dict) and "writeKey" in call:
        call["writeKey"] = REDACTED
        return True
    return False


def redact_body(body: bytes) -> bytes:
    """``body`` without the values of its ``writeKey`` members (see the docstring)."""
    try:
        doc = json.loads(body)
        found = _redact_call(doc)
        if isinstance(doc, dict) and isinstance(doc.get("batch"), list):
            found = any([_redact_call(call) for call in doc["batch"]]) or found
        if not found:
            return body  # as the client sent it
        return json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode("utf-8", "replace")
    except (ValueError, RecursionError):  # not JSON (or UTF-8), or nested too deeply
        return _WRITE_KEY.sub(rb'\1"' + REDACTED.encode() + rb'"', body)


def redact_route(route: str) -> str:
    """The route, the write key of ``/v1/projects/<key>/settings`` replaced, cut."""
    return _SETTINGS_ROUTE.sub(r"\1" + REDACTED, route)[:ROUTE_LIMIT]


def rejection_fields(
    *, at: int, method: str, route: str, status: int, reason: str, source: str | None, body: bytes
) -> dict[str, Any]:
    """The fields of one ``cdp:rejections`` entry (the body redacted, then cut at
    ``BODY_LIMIT``; the route redacted and cut at ``ROUTE_LIMIT``)."""
    body = redact_body(body)
    return {
        "at": at,
        "method": method,
        "route": redact_route(route),
        "status": status,
        "reason": reason,
        "source": source or "",
        "body": body[:BODY_LIMIT].decode("utf-8", "replace"),
        "truncated": int(len(body) > BODY_LIMIT),
    }


async def record_rejections(redis: Client, entries: list[dict[Any, Any]], maxlen: int) -> None:
    """XADD each entry (one round trip)."""
    async with redis.pipeline(transaction=False) as pipe:
        for fields in entries:
            pipe.xadd(keys.REJECTIONS, fields, maxlen=maxlen, approximate=True)
        await pipe.execute()


def _rejection(entry_id: Any, raw: dict[Any, Any]) -> Rejection:
    fields = {text(k): text(v) for k, v in raw.items()}
    return Rejection(
        id=text(entry_id),
        at=int(fields.get("at") or 0),
        method=fields.get("method", ""),
        route=fields.get("route", ""),
        status=int(fields.get("status") or 0),
        reason=fields.get("reason", ""),
        source=fields.get("source") or None,
        body=fields.get("body", ""),
        truncated=fields.get("truncated") == "1",
    )


def check_entry_id(cursor: str) -> str:
    """A stream entry id given back as a cursor, or EventRejected (400)."""
    if not ENTRY_ID.fullmatch(cursor):
        raise EventRejected("query parameter 'after' is not a cursor this route gave")
    return cursor


async def read_rejections(redis: Client, limit: int, after: str | None) -> RejectionPage:
    """The newest ``limit`` refusals (after the entry id ``after`` when given), newest
    first; the cursor is the newest entry id seen (``after`` again when none is newer)."""
    low = "-" if after is None else f"({check_entry_id(after)}"
    rows: Any = await redis.xrevrange(keys.REJECTIONS, "+", low, count=limit)
    found = [_rejection(entry_id, fields) for entry_id, fields in rows]
    if found:
        cursor = found[0].id
    elif after is not None:
        cursor = after
    else:
        cursor = "0-0"
    return RejectionPage(found, cursor)

"""The ingest routes' refusals, kept for the console: ``cdp:rejections``.

Every 4xx answered on ``POST /cdp/ingest`` or a ``/v1/*`` route (preflights aside) is
recorded by the API (``cdp.api.rejected``) as one entry of the stream
``cdp:rejections`` (XADD MAXLEN ~ ``rejections-maxlen``): when (``at``, ms), the
method and route, the status, the message the client got (``reason``), the write
key's source when it was known (never the key), and the body as read, cut at
``BODY_LIMIT`` bytes and decoded as UTF-8 with replacement (``truncated`` says when it
was cut). ``read_rejections`` pages through it newest first for
``GET /cdp/console/rejections``.
"""

from __future__ import annotations

import re
from typing import Any

import msgspec

from cdp import keys
from cdp.connect import Client
from cdp.errors import EventRejected
from cdp.streams import text

BODY_LIMIT = 2048  # bytes of the body kept
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


def rejection_fields(
    *, at: int, method: str, route: str, status: int, reason: str, source: str | None, body: bytes
) -> dict[str, Any]:
    """The fields of one ``cdp:rejections`` entry (the body cut at ``BODY_LIMIT``)."""
    return {
        "at": at,
        "method": method,
        "route": route,
        "status": status,
        "reason": reason,
        "source": source or "",
        "body": body[:BODY_LIMIT].decode("utf-8", "replace"),
        "truncated": int(len(body) > BODY_LIMIT),
    }


async def record_rejection(redis: Client, fields: dict[Any, Any], maxlen: int) -> None:
    await redis.xadd(keys.REJECTIONS, fields, maxlen=maxlen, approximate=True)


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

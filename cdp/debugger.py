"""The live event debugger: the newest accepted events, read back from the partitions.

``recent_events`` reads the partition streams ``cdp:events:{pN}`` newest first (one
XREVRANGE per partition, pipelined, at most ``SCAN_CAP`` entries per partition per
call), decodes their entries (field ``e``: one event, ``b``: several;
``cdp.events.entry_events``), keeps the events every ``EventFilter`` condition
accepts, merges the partitions by entry id (time, then sequence; within an entry the
later events first) and returns the newest ``limit``. Events already trimmed from
the streams (acknowledged, past ``stream-retention``) are gone: the debugger shows
what the streams still hold.

The cursor says where each partition's scan stopped: the newest entry id it saw,
per partition, joined by dots (``CURSOR``, also the OpenAPI document's pattern).
Given back as ``after``, only entries newer than those are read (a poll); a partition
it does not name (the partition count grew) is read as without a cursor; a string of
another shape is ``EventRejected`` (400).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import msgspec

from cdp import keys
from cdp.connect import Client
from cdp.errors import EventRejected
from cdp.events import StreamEvent, entry_events
from cdp.streams import text

SCAN_CAP = 500  # entries read per partition per call
_ID = r"[0-9]{1,19}-[0-9]{1,19}"  # a stream entry id (19 digits: below 2**64)
CURSOR = re.compile(rf"^{_ID}(\.{_ID})*$")


class DebuggerItem(msgspec.Struct):
    """One event as the debugger lists it."""

    id: str  # "<partition>/<entry id>/<index in the entry>"
    partition: int
    entryId: str
    receivedAt: int
    event: StreamEvent


class DebuggerPage(msgspec.Struct):
    events: list[DebuggerItem]
    cursor: str


@dataclass(frozen=True, slots=True)
class EventFilter:
    """Conditions on an event, all of which must hold (None: any)."""

    type: str | None = None  # lower-cased
    name: str | None = None
    source: str | None = None
    identifier: str | None = None  # typed and normalised (cdp.profiles.normalise)
    blocked: frozenset[str] = frozenset()

    def accepts(self, event: StreamEvent) -> bool:
        if self.type is not None and event.type.lower() != self.type:
            return False
        if self.name is not None and event.name != self.name:
            return False
        if self.source is not None and event.source != self.source:
            return False
        return self.identifier is None or self.identifier in event.identifiers(self.blocked)


def _id_key(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq)


def encode_cursor(last: list[str]) -> str:
    return ".".join(last)


def decode_cursor(cursor: str, partitions: int) -> list[str | None]:
    """The per-partition entry ids of a cursor ``encode_cursor`` wrote, or a 400."""
    if not CURSOR.fullmatch(cursor):
        raise EventRejected("query parameter 'after' is not a cursor this route gave")
    given = cursor.split(".")
    return [given[p] if p < len(given) else None for p in range(partitions)]


async def recent_events(
    redis: Client,
    partitions: int,
    limit: int,
    wanted: EventFilter,
    after: list[str | None] | None = None,
) -> DebuggerPage:
    """The newest ``limit`` events ``wanted`` accepts (newer than ``after``, per
    partition, when given), newest first, and the cursor of what was read."""
    async with redis.pipeline(transaction=False) as pipe:
        for p in range(partitions):
            since = None if after is None else after[p]
            low = "-" if since is None else f"({since}"
            pipe.xrevrange(keys.stream(p), "+", low, count=SCAN_CAP)
        replies: list[Any] = await pipe.execute()
    found: list[tuple[tuple[int, int], int, int, DebuggerItem]] = []
    last = [("0-0" if after is None else after[p]) or "0-0" for p in range(partitions)]
    for p, rows in enumerate(replies):
        if rows:
            last[p] = text(rows[0][0])
        for raw_id, fields in rows:
            entry_id = text(raw_id)
            try:
                events = entry_events(fields) or []
            except msgspec.DecodeError:
                continue  # not an entry this version wrote: nothing to show
            for index, event in enumerate(events):
                if wanted.accepts(event):
                    item = DebuggerItem(
                        f"{p}/{entry_id}/{index}", p, entry_id, event.receivedAt, event
                    )
                    found.append((_id_key(entry_id), p, index, item))
    found.sort(key=lambda row: row[:3], reverse=True)
    return DebuggerPage([row[3] for row in found[:limit]], encode_cursor(last))

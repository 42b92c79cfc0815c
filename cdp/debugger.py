"""The live event debugger: the events accepted while someone watches, and before.

Two sources. The partition streams ``cdp:events:{pN}`` hold what the workers have not
trimmed yet (with ``stream-retention`` 0, acknowledged entries leave within seconds).
The tap stream ``cdp:debugger`` holds a copy of every event the API processes stored
while the watch flag ``cdp:debugger:watch`` was set (``cdp.api.tap`` writes it; every
call of the route sets the flag): one entry per flush of an API process, field ``t`` =
a JSON array of ``TapItem`` (the partition, the partition-stream entry id, the index
in that entry, the event), oldest first.

``recent_events`` (no cursor) answers the newest ``limit`` matching events of both,
merged (an event in both is the same item: its ``id`` is ``<partition>/<entry id>/
<index>`` either way), newest first by partition entry id (time, sequence), partition,
index; at most ``SCAN_CAP`` entries read per partition and ``TAP_SCAN_CAP`` tap items.
Its cursor is the tap's newest entry id (``0-0`` when the tap is empty).

``tap_events`` (``after`` = a cursor) reads the tap forward from the cursor: the
oldest ``limit`` matching events after it (at most ``TAP_SCAN_CAP`` items scanned),
answered newest first, and a cursor where the read stopped: an entry id, or
``<entry id>.<n>`` when it stopped after the first n items of an entry (``CURSOR``,
also the OpenAPI document's pattern). Polling with each answer's cursor so yields
every tapped event exactly once. A string of another shape is ``EventRejected`` (400).
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
TAP_SCAN_CAP = 10_000  # tap items decoded per call
TAP_READ = 200  # tap entries read per call
TAP_FIELD = "t"
_ID = r"[0-9]{1,19}-[0-9]{1,19}"  # a stream entry id (19 digits: below 2**64)
CURSOR = re.compile(rf"^({_ID})(?:\.([0-9]{{1,9}}))?$")


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


class TapItem(msgspec.Struct, array_like=True):
    """One tapped event: [partition, partition-stream entry id, index, event]."""

    partition: int
    entry_id: str
    index: int
    event: StreamEvent


_tap_decoder = msgspec.json.Decoder(list[TapItem])


def tap_item(partition: int, entry_id: str, index: int, event_json: bytes) -> bytes:
    """A ``TapItem`` as JSON, from the event's JSON as the publisher encoded it."""
    return b'[%d,"%s",%d,%s]' % (partition, entry_id.encode(), index, event_json)


def tap_entry(items: list[bytes]) -> bytes:
    """The field ``t`` of one tap entry: its items as a JSON array."""
    return b"[" + b",".join(items) + b"]"


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


def _order(item: DebuggerItem) -> tuple[int, int, int, int]:
    """Newest last: partition entry id (time, sequence), partition, index in the entry."""
    ms, seq = _id_key(item.entryId)
    return ms, seq, item.partition, int(item.id.rpartition("/")[2])


def _item(partition: int, entry_id: str, index: int, event: StreamEvent) -> DebuggerItem:
    return DebuggerItem(
        f"{partition}/{entry_id}/{index}", partition, entry_id, event.receivedAt, event
    )


def decode_cursor(cursor: str) -> tuple[str, int]:
    """The tap entry id of a cursor and how many of its items were given, or a 400."""
    match = CURSOR.fullmatch(cursor)
    if match is None:
        raise EventRejected("query parameter 'after' is not a cursor this route gave")
    return match.group(1), int(match.group(2) or 0)


def _tap_items(fields: dict[Any, Any]) -> list[TapItem]:
    raw = fields.get(TAP_FIELD.encode(), fields.get(TAP_FIELD))
    try:
        return _tap_decoder.decode(raw) if raw is not None else []
    except msgspec.DecodeError:
        return []  # not an entry this version wrote: nothing to show


async def _stream_events(redis: Client, partitions: int, wanted: EventFilter) -> list[DebuggerItem]:
    """The matching events the partition streams still hold (their newest entries)."""
    async with redis.pipeline(transaction=False) as pipe:
        for p in range(partitions):
            pipe.xrevrange(keys.stream(p), "+", "-", count=SCAN_CAP)
        replies: list[Any] = await pipe.execute()
    found = []
    for p, rows in enumerate(replies):
        for raw_id, fields in rows:
            entry_id = text(raw_id)
            try:
                events = entry_events(fields) or []
            except msgspec.DecodeError:
                continue
            found += [
                _item(p, entry_id, i, event)
                for i, event in enumerate(events)
                if wanted.accepts(event)
            ]
    return found


async def recent_events(
    redis: Client, partitions: int, limit: int, wanted: EventFilter
) -> DebuggerPage:
    """The newest ``limit`` events ``wanted`` accepts, of the tap and the partition
    streams, newest first; the cursor is the tap's newest entry id."""
    rows: Any = await redis.xrevrange(keys.DEBUGGER, "+", "-", count=TAP_READ)
    cursor = text(rows[0][0]) if rows else "0-0"
    found = {item.id: item for item in await _stream_events(redis, partitions, wanted)}
    scanned = 0
    for _, fields in rows:
        if scanned >= TAP_SCAN_CAP:
            break
        items = _tap_items(fields)
        scanned += len(items)
        for t in items:
            if wanted.accepts(t.event):
                item = _item(t.partition, t.entry_id, t.index, t.event)
                found.setdefault(item.id, item)
    newest = sorted(found.values(), key=_order, reverse=True)
    return DebuggerPage(newest[:limit], cursor)


async def tap_events(redis: Client, limit: int, wanted: EventFilter, after: str) -> DebuggerPage:
    """The oldest ``limit`` tapped events ``wanted`` accepts after the cursor ``after``,
    newest first, and the cursor of where the read stopped."""
    entry_id, given = decode_cursor(after)
    low = entry_id if given else f"({entry_id}"
    rows: Any = await redis.xrange(keys.DEBUGGER, low, "+", count=TAP_READ)
    found: list[DebuggerItem] = []
    cursor, scanned = after, 0
    for raw_id, fields in rows:
        tap_id = text(raw_id)
        items = _tap_items(fields)
        first = given if tap_id == entry_id else 0
        for n in range(first, len(items)):
            t = items[n]
            scanned += 1
            if wanted.accepts(t.event):
                found.append(_item(t.partition, t.entry_id, t.index, t.event))
            if len(found) >= limit or scanned >= TAP_SCAN_CAP:
                cursor = tap_id if n + 1 == len(items) else f"{tap_id}.{n + 1}"
                return DebuggerPage(sorted(found, key=_order, reverse=True), cursor)
        cursor = tap_id
    return DebuggerPage(sorted(found, key=_order, reverse=True), cursor)

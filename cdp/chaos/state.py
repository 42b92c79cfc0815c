"""What Redis holds at the end of a fault run, read back for the checker.

- *stored*: every entry of every partition stream (the run keeps them: its workers
  trim nothing younger than ``stream-retention``), by eventId and by operation tag;
- *parked*: the entries of ``cdp:events:dead`` and ``cdp:events:dropped``;
- *applied*: every eventId in the profiles' seen hashes ``cdp:profile:{cid}:seen``.
  The apply script records an id in the profile it applied the event to, in the same
  atomic step; a merge moves the loser's ids into the survivor; the run's dedup-ttl
  outlasts it (nothing is pruned or expires), so this is exactly the set of applied
  events (the run's events all carry identifiers, and it erases nobody);
- where each stored entry stands in its consumer group: pending (and for whom), or
  never delivered.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import msgspec

from cdp import keys
from cdp.connect import SyncClient
from cdp.events import StreamEvent, entry_events, stream_decoder
from cdp.redis_nodes import scan_all_sync
from cdp.streams import text

Location = tuple[int, str]  # (partition, stream entry id)


@dataclass
class RedisState:
    events: dict[str, StreamEvent] = field(default_factory=dict)  # first stored copy
    copies: dict[str, list[Location]] = field(default_factory=lambda: defaultdict(list))
    by_op: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    parked: dict[str, str] = field(default_factory=dict)  # op tag -> where and why
    applied: set[str] = field(default_factory=set)
    pending: dict[Location, str] = field(default_factory=dict)  # -> consumer
    undelivered: set[Location] = field(default_factory=set)


def op_of(event: StreamEvent) -> str | None:
    op = (event.properties or {}).get("op")
    return op if isinstance(op, str) else None


def _entries(client: SyncClient, stream: str) -> Any:
    start = "-"
    while True:
        rows: Any = client.xrange(stream, min=start, count=5000)
        yield from rows
        if len(rows) < 5000:
            return
        start = "(" + text(rows[-1][0])


def _decode(raw: Any) -> StreamEvent | None:
    try:
        return stream_decoder.decode(raw)
    except (msgspec.DecodeError, TypeError):
        return None


def _decode_entry(fields: Any) -> list[StreamEvent]:
    """The events of a partition stream entry (field ``e`` or ``b``); none if unreadable."""
    try:
        return entry_events(fields) or []
    except (msgspec.DecodeError, TypeError):
        return []


def read_state(client: SyncClient, partitions: int) -> RedisState:
    state = RedisState()
    for p in range(partitions):
        stream = keys.stream(p)
        last = _last_delivered(client, stream)
        for raw_id, fields in _entries(client, stream):
            entry_id = text(raw_id)
            for event in _decode_entry(fields):
                state.events.setdefault(event.eventId, event)
                state.copies[event.eventId].append((p, entry_id))
                if _id(entry_id) > last:
                    state.undelivered.add((p, entry_id))
                op = op_of(event)
                if op is not None:
                    state.by_op[op].add(event.eventId)
        _read_pending(client, p, state)
    for stream in (keys.DEAD, keys.DROPPED):
        for _, fields in _entries(client, stream):
            parked = _decode(fields.get(b"e"))
            op = op_of(parked) if parked is not None else None
            if op is not None:
                reason = text(fields.get(b"reason", b""))
                state.parked[op] = f"{stream}: {reason[:160]}"
    for key in scan_all_sync(client, keys.SEEN_PATTERN):
        state.applied.update(text(k) for k in client.hkeys(key))
    return state


def _id(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def _last_delivered(client: SyncClient, stream: str) -> tuple[int, int]:
    groups: Any = client.xinfo_groups(stream) if client.exists(stream) else []
    group = next((g for g in groups if text(g["name"]) == keys.GROUP), None)
    return _id(text(group["last-delivered-id"])) if group else (0, 0)


def _read_pending(client: SyncClient, partition: int, state: RedisState) -> None:
    stream = keys.stream(partition)
    if not client.exists(stream):
        return
    start = "-"
    while True:
        rows: Any = client.xpending_range(stream, keys.GROUP, start, "+", 5000)
        for row in rows:
            state.pending[(partition, text(row["message_id"]))] = text(row["consumer"])
        if len(rows) < 5000:
            return
        start = "(" + text(rows[-1]["message_id"])

"""The window buffer and watermark, pure (no Redis, no clock of its own).

A worker keeps one ``PartitionBuffer`` per partition it owns. An event read from the
stream is first ``classify``-ed against the watermark *at its arrival* (``receivedAt``,
stamped by the API), so a backlog in the workers never turns accepted events into
late or dropped ones:

- ``ON_TIME``  ts > arrival watermark: it waits in the buffer;
- ``LATE``     ts <= arrival watermark: counted in cdp.events.late, applied on the next tick;
- ``DROPPED``  ts < arrival watermark - grace period: not applied, written with its
               reason to cdp:events:dropped (historical imports are never dropped).

On each tick ``pop_ready(watermark)`` hands back every buffered event with
ts <= watermark = now - window-size, sorted by (ts, eventId).

Backpressure: ``read_plan`` sizes each read to the room left under ``max-buffer``.
"""

from __future__ import annotations

import heapq
import itertools
from enum import Enum
from typing import Generic, TypeVar

T = TypeVar("T")


class Arrival(Enum):
    ON_TIME = "on_time"
    LATE = "late"
    DROPPED = "dropped"


def read_plan(
    partitions: list[int], room: int, read_count: int, turn: int = 0
) -> tuple[list[int], int]:
    """The partitions one XREADGROUP reads and its COUNT, adding at most ``room`` entries.

    COUNT applies to each stream of the call, so it is the room shared among them
    (at most ``read_count``). With less room than partitions, ``room`` of them are
    read one entry each, starting at a partition that moves with ``turn`` so that
    none is left behind.
    """
    if room <= 0 or not partitions:
        return [], 0
    n = len(partitions)
    per_stream = min(read_count, room // n)
    if per_stream >= 1:
        return list(partitions), per_stream
    first = turn % n
    return (partitions[first:] + partitions[:first])[:room], 1


def classify(
    ts_ms: int, received_at_ms: int, window_ms: int, grace_ms: int, *, backfill: bool = False
) -> Arrival:
    watermark = received_at_ms - window_ms
    if ts_ms > watermark:
        return Arrival.ON_TIME
    if ts_ms < watermark - grace_ms and not backfill:
        return Arrival.DROPPED
    return Arrival.LATE


class PartitionBuffer(Generic[T]):
    """Events of one partition waiting for the watermark, in (ts, eventId) order.

    An event is known by its stream entry id and eventId: an entry may hold several
    events (a request's events of one partition), each pushed on its own.
    """

    def __init__(self) -> None:
        self._heap: list[tuple[int, str, int, str, T]] = []
        self._keys: set[tuple[str, str]] = set()
        self._entries: dict[str, int] = {}  # entry id -> its events buffered
        self._tiebreak = itertools.count()

    def __len__(self) -> int:
        """Events buffered."""
        return len(self._heap)

    @property
    def entries(self) -> int:
        """Stream entries with at least one event buffered."""
        return len(self._entries)

    def __contains__(self, entry_id: object) -> bool:
        return entry_id in self._entries

    def push(self, ts_ms: int, event_id: str, entry_id: str, item: T) -> bool:
        """Add one event of a stream entry; False if it is already buffered."""
        key = (entry_id, event_id)
        if key in self._keys:
            return False
        self._keys.add(key)
        self._entries[entry_id] = self._entries.get(entry_id, 0) + 1
        heapq.heappush(self._heap, (ts_ms, event_id, next(self._tiebreak), entry_id, item))
        return True

    def earliest(self) -> int | None:
        """The smallest buffered ts (the next event the watermark will pass), or None."""
        return self._heap[0][0] if self._heap else None

    def pop_ready(self, watermark_ms: int, limit: int | None = None) -> list[tuple[str, T]]:
        """Remove and return (entry id, item) of events with ts <= watermark, in order."""
        ready: list[tuple[str, T]] = []
        heap, entries = self._heap, self._entries
        while heap and heap[0][0] <= watermark_ms and (limit is None or len(ready) < limit):
            _, event_id, _, entry_id, item = heapq.heappop(heap)
            self._keys.discard((entry_id, event_id))
            left = entries[entry_id] - 1
            if left:
                entries[entry_id] = left
            else:
                del entries[entry_id]
            ready.append((entry_id, item))
        return ready

    def clear(self) -> None:
        self._heap.clear()
        self._keys.clear()
        self._entries.clear()

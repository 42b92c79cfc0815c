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
    """Events of one partition waiting for the watermark, in (ts, eventId) order."""

    def __init__(self) -> None:
        self._heap: list[tuple[int, str, int, str, T]] = []
        self._entry_ids: set[str] = set()
        self._tiebreak = itertools.count()

    def __len__(self) -> int:
        return len(self._heap)

    def __contains__(self, entry_id: object) -> bool:
        return entry_id in self._entry_ids

    def push(self, ts_ms: int, event_id: str, entry_id: str, item: T) -> bool:
        """Add one stream entry; False if this entry is already buffered."""
        if entry_id in self._entry_ids:
            return False
        self._entry_ids.add(entry_id)
        heapq.heappush(self._heap, (ts_ms, event_id, next(self._tiebreak), entry_id, item))
        return True

    def earliest(self) -> int | None:
        """The smallest buffered ts (the next event the watermark will pass), or None."""
        return self._heap[0][0] if self._heap else None

    def pop_ready(self, watermark_ms: int, limit: int | None = None) -> list[tuple[str, T]]:
        """Remove and return (entry id, item) of events with ts <= watermark, in order."""
        ready: list[tuple[str, T]] = []
        heap = self._heap
        while heap and heap[0][0] <= watermark_ms and (limit is None or len(ready) < limit):
            _, _, _, entry_id, item = heapq.heappop(heap)
            self._entry_ids.discard(entry_id)
            ready.append((entry_id, item))
        return ready

    def clear(self) -> None:
        self._heap.clear()
        self._entry_ids.clear()

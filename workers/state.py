"""What the worker's loops share: the partitions it owns and the entries it holds.

An entry is *held* while one of its events is buffered, or popped by the tick in
hand and not yet settled (``in_flight``). Held events count against ``max-buffer``
and held entries are never claimed again while held; what a read has asked for and
not yet received counts too (``reserved``). The events wake the loops: ``has_room``
the read loop waiting for room, ``owned_changed`` the read loop waiting for
partitions, ``wake`` the tick loop when something was buffered (it may be due sooner
than the tick planned), ``stopping`` everyone.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterable
from typing import Any

import structlog

from cdp.events import StreamEvent
from cdp.pipeline.buffer import PartitionBuffer

Chunk = list[tuple[str, StreamEvent]]  # (stream entry id, event), in apply order

# The entry id an event is applied with when applying it must not acknowledge its
# entry (others of the entry are not settled yet): the script acknowledges no empty sid.
NO_ACK = ""


class WorkerState:
    def __init__(self, worker_id: str, max_buffer: int) -> None:
        self.worker_id = worker_id
        self.max_buffer = max_buffer
        self.buffers: dict[int, PartitionBuffer[StreamEvent]] = {}
        # partition -> entry ids popped by the tick in hand and not yet settled.
        self.in_flight: dict[int, set[str]] = {}
        self.in_flight_events = 0
        # Entries of several events (field ``b``): partition -> entry id -> its events
        # not yet settled (applied, found duplicates, parked or dropped). Such an entry
        # is acknowledged by the worker once that reaches 0 (``settle``), never by the
        # apply of one of its events; entries of one event are acknowledged by their
        # apply as before.
        self.unsettled: dict[int, dict[str, int]] = {}
        self.completed: list[tuple[int, str]] = []  # settled entries to acknowledge
        self.events_per_entry = 1.0  # a running mean, to size reads in entries
        self.reserved = 0  # room promised to a read under way
        self.stats: Counter[str] = Counter()  # for the summary line at stop
        self.unflushed: Counter[tuple[int, str]] = Counter()  # (partition, metric) -> to add
        self.stopping = asyncio.Event()
        self.has_room = asyncio.Event()
        self.has_room.set()
        self.owned_changed = asyncio.Event()
        self.wake = asyncio.Event()
        self.log: Any = structlog.get_logger("cdp.worker").bind(worker=worker_id)

    @property
    def owned(self) -> set[int]:
        return set(self.buffers)

    @property
    def buffered(self) -> int:
        return sum(len(b) for b in self.buffers.values())

    @property
    def held(self) -> int:
        """Events in memory: buffered, or in the hands of the tick."""
        return self.buffered + self.in_flight_events

    @property
    def room(self) -> int:
        """How many more events may be read or claimed under ``max-buffer``."""
        return self.max_buffer - self.held - self.reserved

    def entry_room(self, room: int) -> int:
        """Entries a read may ask for to bring about ``room`` events."""
        return max(1, int(room / self.events_per_entry)) if room > 0 else 0

    def track(self, partition: int, entry_id: str, events: int) -> None:
        """``entry_id`` holds several events, ``events`` of them buffered: acknowledged by
        the worker once they are all settled."""
        self.unsettled.setdefault(partition, {})[entry_id] = events

    def script_chunk(self, partition: int, chunk: Chunk) -> Chunk:
        """``chunk`` as the apply script gets it: an event of an entry of several is
        applied with NO_ACK (its entry is acknowledged by ``settle``)."""
        tracked = self.unsettled.get(partition)
        if not tracked:
            return chunk
        return [(NO_ACK if eid in tracked else eid, ev) for eid, ev in chunk]

    def settle(self, partition: int, entry_id: str) -> bool:
        """One event of ``entry_id`` is settled; True when that completes an entry of
        several events (now in ``completed``, to acknowledge)."""
        tracked = self.unsettled.get(partition)
        if tracked is None or entry_id not in tracked:
            return False
        left = tracked[entry_id] - 1
        if left > 0:
            tracked[entry_id] = left
            return False
        del tracked[entry_id]
        self.completed.append((partition, entry_id))
        return True

    def put_in_flight(self, ready: dict[int, Chunk]) -> dict[int, set[str]]:
        popped = {p: {entry_id for entry_id, _ in batch} for p, batch in ready.items()}
        for p, ids in popped.items():
            self.in_flight.setdefault(p, set()).update(ids)
        self.in_flight_events += sum(len(batch) for batch in ready.values())
        return popped

    def holds(self, partition: int, entry_id: str) -> bool:
        buffer = self.buffers.get(partition)
        return (buffer is not None and entry_id in buffer) or self.in_flight_has(
            partition, entry_id
        )

    def in_flight_has(self, partition: int, entry_id: str) -> bool:
        ids = self.in_flight.get(partition)
        return ids is not None and entry_id in ids

    def held_of(self, partition: int) -> int:
        """Entries of ``partition`` in memory."""
        buffer = self.buffers.get(partition)
        flying = self.in_flight.get(partition, ())
        if buffer is None:
            return len(flying)
        return buffer.entries + sum(1 for eid in flying if eid not in buffer)

    def take_off(self, popped: dict[int, set[str]], events: int) -> None:
        """The tick settled (or gave back) what it popped: no longer in flight."""
        self.in_flight_events -= events
        for p, ids in popped.items():
            held = self.in_flight.get(p)
            if held is not None:
                held -= ids
                if not held:
                    del self.in_flight[p]

    def forget(self, partition: int) -> None:
        """The lease is gone: drop the buffer (its entries stay pending for the new owner)."""
        buffer = self.buffers.pop(partition, None)
        self.unsettled.pop(partition, None)
        self.completed = [(p, eid) for p, eid in self.completed if p != partition]
        if buffer is not None:
            self.log.info("partition released", partition=partition, forgotten=len(buffer))

    def requeue(self, calls: Iterable[tuple[int, Chunk]]) -> None:
        """A round trip failed: the events go back to their buffers for the next tick."""
        for p, chunk in calls:
            buffer = self.buffers.get(p)
            if buffer is not None:
                for entry_id, event in chunk:
                    buffer.push(event.ts, event.eventId, entry_id, event)

    def stop(self) -> None:
        self.stopping.set()
        self.has_room.set()
        self.owned_changed.set()
        self.wake.set()

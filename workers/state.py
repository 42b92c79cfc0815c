"""What the worker's loops share: the partitions it owns and the entries it holds.

An entry is *held* while it is buffered, or popped by the tick in hand and not yet
settled (``in_flight``). Held entries count against ``max-buffer`` and are never
claimed again while held; what a read has asked for and not yet received counts too
(``reserved``). The events wake the loops: ``has_room`` the read loop waiting for
room, ``owned_changed`` the read loop waiting for partitions, ``wake`` the tick loop
when something was buffered (it may be due sooner than the tick planned),
``stopping`` everyone.
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


class WorkerState:
    def __init__(self, worker_id: str, max_buffer: int) -> None:
        self.worker_id = worker_id
        self.max_buffer = max_buffer
        self.buffers: dict[int, PartitionBuffer[StreamEvent]] = {}
        # partition -> entry ids popped by the tick in hand and not yet settled.
        self.in_flight: dict[int, set[str]] = {}
        self.reserved = 0  # room promised to a read under way
        self.stats: Counter[str] = Counter()  # for the summary line at stop
        self.unflushed: Counter[str] = Counter()  # metrics for the next tick's round trip
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
        """Entries in memory: buffered, or in the hands of the tick."""
        return self.buffered + sum(len(ids) for ids in self.in_flight.values())

    @property
    def room(self) -> int:
        """How many more entries may be read or claimed under ``max-buffer``."""
        return self.max_buffer - self.held - self.reserved

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
        return (len(buffer) if buffer is not None else 0) + len(self.in_flight.get(partition, ()))

    def take_off(self, popped: dict[int, set[str]]) -> None:
        """The tick settled (or gave back) what it popped: no longer in flight."""
        for p, ids in popped.items():
            held = self.in_flight.get(p)
            if held is not None:
                held -= ids
                if not held:
                    del self.in_flight[p]

    def forget(self, partition: int) -> None:
        """The lease is gone: drop the buffer (its entries stay pending for the new owner)."""
        buffer = self.buffers.pop(partition, None)
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

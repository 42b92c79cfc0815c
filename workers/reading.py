"""The read loop: XREADGROUP over the owned partitions into their buffers.

On one Redis, one XREADGROUP BLOCK reads every owned stream. On a cluster each stream is
a slot of its own and a command may not name keys of several slots: one non-blocking
XREADGROUP per partition, pipelined (one round trip per node), and a short pause,
doubling from 5 ms to 100 ms, while every stream answers empty (reset by the first
entry), instead of BLOCK.

Each event is classified on arrival (``cdp.pipeline.buffer.classify``): on time and
late ones are buffered, one older than the watermark minus grace-period is dropped
(``workers.dead_letters``). A read asks for no more than the room left under
``max-buffer`` (COUNT is per stream: ``read_plan`` shares it out) and reading stops
while there is none (backpressure). Entries claimed by the housekeeping come through
``ingest`` too.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import msgspec
from redis.exceptions import RedisError

from cdp import keys
from cdp.connect import Client, is_cluster
from cdp.events import StreamEvent, entry_events, stream_encoder
from cdp.pipeline.buffer import Arrival, PartitionBuffer, classify, read_plan
from cdp.settings import Settings
from cdp.streams import text
from workers.dead_letters import DeadLetters, Dropped
from workers.state import WorkerState

# (entry id, fields or None when the entry was deleted), as redis-py returns them.
Entry = Any

BLOCK_MS = 200  # one Redis: how long one XREADGROUP over every owned stream waits
IDLE_MIN_S = 0.005  # a cluster: the first pause after an empty round of reads
IDLE_MAX_S = 0.1  # ... doubling up to this while the streams stay empty


class Reader:
    def __init__(
        self, redis: Client, settings: Settings, state: WorkerState, dead_letters: DeadLetters
    ) -> None:
        self.redis = redis
        self.settings = settings
        self.state = state
        self.dead_letters = dead_letters
        self._turn = 0  # which partitions go first when the room is short
        # A cluster cannot XREADGROUP streams of several slots in one command.
        self._per_partition = is_cluster(redis)
        self._pause = 0.0  # the current pause between empty reads (a cluster)

    async def run(self) -> None:
        state = self.state
        while not state.stopping.is_set():
            room = state.room
            if room <= 0:
                state.has_room.clear()
                await state.has_room.wait()
                continue
            owned = sorted(state.owned)
            if not owned:
                state.owned_changed.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(state.owned_changed.wait(), 1)
                continue
            partitions, count = read_plan(
                owned, state.entry_room(room), self.settings.read_count, self._turn
            )
            self._turn += 1
            reserved = int(count * len(partitions) * state.events_per_entry)
            state.reserved += reserved
            try:
                await self.read_once(partitions, count)
            finally:
                state.reserved -= reserved

    async def read_once(self, partitions: list[int], count: int) -> None:
        log = self.state.log
        try:
            if self._per_partition:
                streams, failed = await self._read_each(partitions, count)
            else:
                reply: Any = await self.redis.xreadgroup(
                    keys.GROUP,
                    self.state.worker_id,
                    {keys.stream(p): ">" for p in partitions},
                    count=count,
                    block=BLOCK_MS,
                )
                streams, failed = reply or [], False  # RESP2: [[stream, entries], ...]
        except RedisError as exc:  # a reply lost after Redis read: reclaim_pending
            log.warning("read: redis error", error=str(exc))
            await asyncio.sleep(0.5)
            return
        for stream, entries in streams:
            name = text(stream)
            partition = int(name.rsplit("{p", 1)[1].rstrip("}"))
            try:
                await self.ingest(partition, entries)
            except RedisError as exc:  # what was not buffered stays pending: reclaim_pending
                log.warning("read: redis error", partition=partition, error=str(exc))
                failed = True
        if failed:
            await asyncio.sleep(0.5)
        elif self._per_partition:
            await self._idle(any(entries for _, entries in streams))

    async def _read_each(self, partitions: list[int], count: int) -> tuple[list[Any], bool]:
        """A cluster: one non-blocking XREADGROUP per partition (each stream is a slot of
        its own), pipelined (redis-py sends one pipeline per node). The streams that
        answered entries, and whether any read failed."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for p in partitions:
                pipe.xreadgroup(
                    keys.GROUP, self.state.worker_id, {keys.stream(p): ">"}, count=count
                )
            replies = await pipe.execute(raise_on_error=False)
        streams: list[Any] = []
        failed = False
        for p, reply in zip(partitions, replies, strict=True):
            if isinstance(reply, Exception):
                self.state.log.warning("read: redis error", partition=p, error=str(reply))
                failed = True
            elif reply:
                streams += reply
        return streams, failed

    async def _idle(self, found: bool) -> None:
        """After a non-blocking read: go on at once when it found entries, else wait a
        pause that doubles from IDLE_MIN_S to IDLE_MAX_S while the streams stay empty
        (an idle worker neither spins nor delays the first new entry by more than
        IDLE_MAX_S; BLOCK_MS plays that part on one Redis)."""
        if found:
            self._pause = 0.0
            return
        self._pause = min(max(self._pause * 2, IDLE_MIN_S), IDLE_MAX_S)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.state.stopping.wait(), self._pause)

    async def ingest(self, partition: int, entries: list[Entry], claimed: bool = False) -> int:
        """Classify and buffer entries of ``partition``; returns how many were buffered.

        An entry of several events (field ``b``) is buffered event by event and tracked
        (``WorkerState.track``) until each is settled; its dropped events are recorded
        at once, and acknowledged with it only when none of its events was buffered.
        """
        state = self.state
        buffer = state.buffers.get(partition)
        if buffer is None:  # lost while reading: the entries stay pending for the new owner
            return 0
        dropped: list[Dropped] = []
        count = events_read = 0
        for entry_id, fields in entries:
            eid = text(entry_id)
            if state.in_flight_has(partition, eid):  # claimed again while being applied
                continue
            try:
                events = entry_events(fields or {})
            except msgspec.DecodeError as exc:
                raw = (fields or {}).get(b"e") or (fields or {}).get(b"b") or b""
                dropped.append(Dropped(eid, None, raw, f"undecodable: {exc}"))
                continue
            if not events:  # deleted from the stream under us: nothing to apply
                dropped.append(Dropped(eid, None, b"", "missing"))
                continue
            events_read += len(events)
            if len(events) == 1:
                raw = (fields or {}).get(b"e")
                count += self._buffer_one(partition, buffer, eid, events[0], claimed, dropped, raw)
                continue
            drops: list[Dropped] = []
            pushed = 0
            seen: set[str] = set()
            for event in events:
                if event.eventId in seen:  # twice in one request: the second is a duplicate
                    state.unflushed[partition, "dedup_hits"] += 1
                    continue
                seen.add(event.eventId)
                pushed += self._buffer_one(partition, buffer, eid, event, claimed, drops)
            # The entry is acknowledged with its dropped events only when none was buffered.
            dropped += [d._replace(ack=not pushed) for d in drops]
            if pushed:
                state.track(partition, eid, pushed)
            count += pushed
        if entries:
            n = len(entries)
            state.events_per_entry += (max(events_read, n) / n - state.events_per_entry) / 4
        if count:
            state.wake.set()  # the tick loop plans its next tick again
        if dropped:
            await self.dead_letters.record(partition, dropped)
        return count

    def _buffer_one(
        self,
        partition: int,
        buffer: PartitionBuffer[StreamEvent],
        eid: str,
        event: StreamEvent,
        claimed: bool,
        dropped: list[Dropped],
        raw: bytes | None = None,
    ) -> int:
        """Buffer one event of entry ``eid`` (1), or add it to ``dropped`` (0)."""
        s, state = self.settings, self.state
        # Judged on receivedAt, so a claimed entry is classified as its first reader
        # did: a crash never changes which events are applied.
        arrival = classify(
            event.ts,
            event.receivedAt,
            s.window_size_ms,
            s.grace_period_ms,
            backfill=event.mode == "import",
        )
        if arrival is Arrival.DROPPED:
            body = raw if raw is not None else stream_encoder.encode(event)
            dropped.append(
                Dropped(eid, event, body, "older than watermark - grace-period at arrival")
            )
            return 0
        if arrival is Arrival.LATE and not claimed:
            state.unflushed[partition, "late"] += 1
        return int(buffer.push(event.ts, event.eventId, eid, event))

"""The worker: read owned partitions, buffer to the watermark, apply, acknowledge.

Four loops share one process and one event loop:

- leases: every lease-ttl/3, heartbeat and rebalance; a gained partition starts with
  an empty buffer and claims every entry still pending in the group for it (a dead
  owner's, or this worker's own from before); a lost one has its buffer forgotten.
  Then every entry pending for an owned partition that this worker does not hold in
  memory (read by a stale owner, or its own whose reply was lost, or left by a failed
  tick) is claimed once idle for lease-ttl (``reclaim_pending``);
- read: XREADGROUP over the owned partitions into their buffers, classifying each
  event as on time, late or dropped; a read asks for no more than the room left under
  ``max-buffer`` (COUNT is per stream: ``read_plan`` shares it out) and reading stops
  while there is none (backpressure);
- tick: every ticker-interval, pop what is ready (ts <= now - window-size) from each
  buffer and apply it with one pipelined round trip of ``apply_batch`` calls, which
  acknowledge what they applied; the metrics go in the same round trip. A call that
  Redis refused (OOM, READONLY, a lost connection) goes back to the buffer for the
  next tick; one the script refused as CDP_POISON is applied again event by event and
  the guilty event parked in cdp:events:dead. Then the profiles the tick touched are
  evaluated against the segments (once each), and, if this worker holds the sweeper
  lease, the due-time sweep and backfills run;
- webhooks: if this worker holds the dispatcher lease, deliver segment events.

What the worker holds (buffered, or popped by a tick and not yet settled) counts
against ``max-buffer``, and is never claimed again while held.

Stopping (SIGTERM/SIGINT) ends reading, finishes the tick in hand, hands the leases
back and logs one summary line; whatever was buffered stays pending for the next owner.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
import uuid
from collections import Counter
from collections.abc import Coroutine
from typing import Any

import aiohttp
import msgspec
import structlog
from redis.asyncio import Redis
from redis.exceptions import RedisError, ResponseError

from cdp import keys
from cdp.clock import Clock
from cdp.events import StreamEvent, stream_decoder
from cdp.pipeline.apply import ApplyContext, BatchResult, parse_result, queue_apply
from cdp.pipeline.buffer import Arrival, PartitionBuffer, classify, read_plan
from cdp.pipeline.leases import LeaseManager
from cdp.scripts import Scripts, is_poison
from cdp.segments.engine import SegmentEngine
from cdp.segments.sweeper import Sweeper
from cdp.segments.webhooks import Dispatcher
from cdp.settings import Settings
from cdp.streams import text

log = structlog.get_logger("cdp.worker")

# (entry id, fields or None when the entry was deleted), as redis-py returns them.
Entry = Any
Chunk = list[tuple[str, StreamEvent]]


def new_worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


async def ensure_groups(redis: Redis, partitions: int) -> None:
    """Create the consumer group on every partition stream (idempotent)."""
    for p in range(partitions):
        try:
            await redis.xgroup_create(keys.stream(p), keys.GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise


class Worker:
    def __init__(
        self, redis: Redis, settings: Settings, clock: Clock, worker_id: str | None = None
    ) -> None:
        self.redis = redis
        self.settings = settings
        self.clock = clock
        self.worker_id = worker_id or new_worker_id()
        self.scripts = Scripts(redis)
        self.engine = SegmentEngine(redis, self.scripts, settings)
        self.sweeper = Sweeper(
            redis, self.scripts, self.engine, clock, self.worker_id, settings.lease_ttl_ms
        )
        self.dispatcher = Dispatcher(redis, self.scripts, settings, clock, self.worker_id)
        self._touched: set[str] = set()
        self.leases = LeaseManager(
            redis, self.scripts, self.worker_id, settings.partitions, settings.lease_ttl_ms
        )
        self.buffers: dict[int, PartitionBuffer[StreamEvent]] = {}
        # (partition, entry id) popped by the tick in hand and not yet settled.
        self._in_flight: set[tuple[int, str]] = set()
        self._reserved = 0  # room promised to a read under way
        self._read_turn = 0
        self.stats: Counter[str] = Counter()
        self._unflushed: Counter[str] = Counter()
        self._stopping = asyncio.Event()
        self._has_room = asyncio.Event()
        self._has_room.set()
        self._owned_changed = asyncio.Event()
        self._log = log.bind(worker=self.worker_id)

    @property
    def owned(self) -> set[int]:
        return set(self.buffers)

    @property
    def buffered(self) -> int:
        return sum(len(b) for b in self.buffers.values())

    @property
    def held(self) -> int:
        """Entries in memory: buffered, or in the hands of the tick."""
        return self.buffered + len(self._in_flight)

    @property
    def room(self) -> int:
        """How many more entries may be read or claimed under ``max-buffer``."""
        return self.settings.max_buffer - self.held - self._reserved

    def holds(self, partition: int, entry_id: str) -> bool:
        buffer = self.buffers.get(partition)
        return (buffer is not None and entry_id in buffer) or (
            partition,
            entry_id,
        ) in self._in_flight

    def stop(self) -> None:
        self._stopping.set()
        self._has_room.set()
        self._owned_changed.set()

    async def run(self) -> None:
        await ensure_groups(self.redis, self.settings.partitions)
        self._log.info("worker started", partitions=self.settings.partitions)
        started = time.monotonic()
        loops = [self._lease_loop(), self._read_loop(), self._tick_loop(), self._webhook_loop()]
        tasks = [asyncio.create_task(self._guarded(loop)) for loop in loops]
        try:
            await self._stopping.wait()
        finally:
            tasks[3].cancel()
            await asyncio.gather(tasks[3], return_exceptions=True)
            tasks[1].cancel()  # reading stops at once
            await asyncio.gather(tasks[1], return_exceptions=True)
            tasks[0].cancel()
            await asyncio.gather(tasks[0], return_exceptions=True)
            await asyncio.gather(tasks[2], return_exceptions=True)  # finishes its tick
            with contextlib.suppress(RedisError):
                await self.leases.release_all(self.owned)
                await self.sweeper.release()
                await self.dispatcher.release()
            self._log.info(
                "worker stopped",
                seconds=round(time.monotonic() - started, 1),
                left_pending=self.buffered,
                **dict(self.stats),
            )

    async def _guarded(self, loop: Coroutine[Any, Any, None]) -> None:
        """A loop that dies stops the worker (its leases go to others), never silently."""
        try:
            await loop
        except asyncio.CancelledError:
            raise
        except Exception:
            self._log.exception("worker loop failed; stopping so that others take over")
            self.stop()

    # -- leases ---------------------------------------------------------------------

    async def _lease_loop(self) -> None:
        interval = self.settings.lease_ttl_ms / 3000
        last_trim = 0.0
        while not self._stopping.is_set():
            try:
                await self.rebalance()
                await self.reclaim_pending()
                if time.monotonic() - last_trim > 10:
                    last_trim = time.monotonic()
                    await self.trim()
            except RedisError as exc:
                self._log.warning("lease loop: redis error", error=str(exc))
            await asyncio.sleep(interval)

    async def rebalance(self) -> None:
        gained, lost = await self.leases.rebalance(self.owned)
        for p in lost:
            self._forget(p)
        for p in sorted(gained):
            self.buffers[p] = PartitionBuffer()
            claimed = await self._claim_pending(p)
            self._log.info("partition acquired", partition=p, claimed=claimed)
        if gained or lost:
            self._owned_changed.set()

    def _forget(self, partition: int) -> None:
        buffer = self.buffers.pop(partition, None)
        if buffer is not None:
            self._log.info("partition released", partition=partition, forgotten=len(buffer))

    async def _claim_pending(self, partition: int) -> int:
        """Take over the entries still pending for ``partition``, whoever read them.

        As many as there is room for; the rest wait in the group, for
        ``reclaim_pending`` once there is room again.
        """
        stream = keys.stream(partition)
        cursor: Any = "0-0"
        claimed = 0
        while self.room > 0 and partition in self.buffers:
            reply = await self.redis.xautoclaim(
                stream,
                keys.GROUP,
                self.worker_id,
                min_idle_time=0,
                start_id=cursor,
                count=min(1000, self.room),
            )
            cursor, entries = reply[0], reply[1]
            claimed += await self._ingest_entries(partition, entries, claimed=True)
            if cursor in (b"0-0", "0-0"):
                break
        return claimed

    async def reclaim_pending(self) -> int:
        """Claim every entry pending for an owned partition that this worker does not hold.

        An entry can be pending in the group and in nobody's memory: read by a worker
        whose lease had expired (it reads a few more before its next rebalance
        notices), or read by this worker when the reply was lost with the connection,
        or when recording dropped entries failed, or when a tick failed halfway. Once
        idle for lease-ttl such an entry is claimed and buffered again (dedup makes a
        second apply harmless), so it is applied, parked or dropped within about twice
        lease-ttl, without a restart. Entries this worker holds are skipped; its own
        pending list is only read when it is longer than what it holds.
        """
        owned = sorted(self.owned)
        if not owned:
            return 0
        async with self.redis.pipeline(transaction=False) as pipe:
            for p in owned:
                pipe.xpending(keys.stream(p), keys.GROUP)
            summaries = await pipe.execute()
        claimed = 0
        for p, summary in zip(owned, summaries, strict=True):
            buffer = self.buffers.get(p)
            held = (len(buffer) if buffer is not None else 0) + sum(
                1 for q, _ in self._in_flight if q == p
            )
            for consumer in summary["consumers"]:
                name = text(consumer["name"])
                if name == self.worker_id and int(consumer["pending"]) <= held:
                    continue
                claimed += await self._reclaim_from(p, name)
        if claimed:
            self._log.info("pending entries claimed", claimed=claimed)
        return claimed

    async def _reclaim_from(self, partition: int, consumer: str) -> int:
        """Claim ``consumer``'s entries of ``partition`` idle for lease-ttl and not held;
        returns how many were claimed (buffered, or dropped at once)."""
        stream = keys.stream(partition)
        idle = self.settings.lease_ttl_ms
        start = "-"
        claimed = 0
        while self.room > 0 and partition in self.buffers:
            rows = await self.redis.xpending_range(
                stream, keys.GROUP, start, "+", 500, consumername=consumer, idle=idle
            )
            ids: list[Any] = [
                text(row["message_id"])
                for row in rows
                if not self.holds(partition, text(row["message_id"]))
            ][: self.room]
            if ids:
                entries = await self.redis.xclaim(stream, keys.GROUP, self.worker_id, idle, ids)
                await self._ingest_entries(partition, entries, claimed=True)
                claimed += len(entries)
            if len(rows) < 500:
                break
            start = "(" + text(rows[-1]["message_id"])  # exclusive (Redis >= 6.2)
        return claimed

    async def trim(self) -> None:
        """Trim owned streams below the oldest entry the group still needs.

        Nothing at or after the group's oldest pending entry, nor after its last
        delivered entry, is removed: an entry leaves the stream only once acknowledged.
        """
        now = time.time_ns() // 1_000_000
        for p in sorted(self.owned):
            stream = keys.stream(p)
            groups = await self.redis.xinfo_groups(stream)
            group = next((g for g in groups if text(g["name"]) == keys.GROUP), None)
            if group is None:
                continue
            ms, seq = (int(x) for x in text(group["last-delivered-id"]).split("-"))
            threshold = (ms, seq + 1)
            pending = await self.redis.xpending(stream, keys.GROUP)
            if pending["pending"]:
                pm, ps = (int(x) for x in text(pending["min"]).split("-"))
                threshold = min(threshold, (pm, ps))
            if self.settings.stream_retention_ms:
                threshold = min(threshold, (now - self.settings.stream_retention_ms, 0))
            await self.redis.xtrim(stream, minid=f"{threshold[0]}-{threshold[1]}", approximate=True)

    # -- read -----------------------------------------------------------------------

    async def _read_loop(self) -> None:
        while not self._stopping.is_set():
            room = self.room
            if room <= 0:
                self._has_room.clear()
                await self._has_room.wait()
                continue
            owned = sorted(self.owned)
            if not owned:
                self._owned_changed.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._owned_changed.wait(), 1)
                continue
            partitions, count = read_plan(owned, room, self.settings.read_count, self._read_turn)
            self._read_turn += 1
            reserved = count * len(partitions)
            self._reserved += reserved
            try:
                await self._read_once(partitions, count)
            finally:
                self._reserved -= reserved

    async def _read_once(self, partitions: list[int], count: int) -> None:
        try:
            reply = await self.redis.xreadgroup(
                keys.GROUP,
                self.worker_id,
                {keys.stream(p): ">" for p in partitions},
                count=count,
                block=200,
            )
        except RedisError as exc:  # a reply lost after Redis read: reclaim_pending
            self._log.warning("read: redis error", error=str(exc))
            await asyncio.sleep(0.5)
            return
        failed = False
        streams: Any = reply or []  # RESP2: [[stream, entries], ...]
        for stream, entries in streams:
            name = text(stream)
            partition = int(name.rsplit("{p", 1)[1].rstrip("}"))
            try:
                await self._ingest_entries(partition, entries)
            except RedisError as exc:  # what was not buffered stays pending: reclaim_pending
                self._log.warning("read: redis error", partition=partition, error=str(exc))
                failed = True
        if failed:
            await asyncio.sleep(0.5)

    async def _ingest_entries(
        self, partition: int, entries: list[Entry], claimed: bool = False
    ) -> int:
        """Classify and buffer entries of ``partition``; returns how many were buffered."""
        buffer = self.buffers.get(partition)
        if buffer is None:  # lost while reading: the entries stay pending for the new owner
            return 0
        s = self.settings
        dropped: list[tuple[str, StreamEvent | None, bytes, str]] = []
        count = 0
        for entry_id, fields in entries:
            eid = text(entry_id)
            if (partition, eid) in self._in_flight:  # claimed again while being applied
                continue
            raw = (fields or {}).get(b"e")
            if raw is None:  # deleted from the stream under us: nothing to apply
                dropped.append((eid, None, b"", "missing"))
                continue
            try:
                event = stream_decoder.decode(raw)
            except msgspec.DecodeError as exc:
                dropped.append((eid, None, raw, f"undecodable: {exc}"))
                continue
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
                dropped.append((eid, event, raw, "older than watermark - grace-period at arrival"))
                continue
            if arrival is Arrival.LATE and not claimed:
                self._unflushed["late"] += 1
            if buffer.push(event.ts, event.eventId, eid, event):
                count += 1
        if dropped:
            await self._drop(partition, dropped)
        return count

    async def _drop(
        self, partition: int, dropped: list[tuple[str, StreamEvent | None, bytes, str]]
    ) -> None:
        """Record each dropped entry in cdp:events:dropped (or dead), then acknowledge it."""
        async with self.redis.pipeline(transaction=True) as pipe:
            for eid, event, raw, reason in dropped:
                stream = keys.DROPPED if event is not None else keys.DEAD
                pipe.xadd(
                    stream,
                    {"e": raw, "reason": reason, "partition": partition, "entryId": eid},
                    maxlen=self.settings.dropped_stream_maxlen,
                    approximate=True,
                )
                pipe.xack(keys.stream(partition), keys.GROUP, eid)
            n = sum(1 for _, event, _, _ in dropped if event is not None)
            if n:
                pipe.hincrby(keys.METRICS, "dropped", n)
            await pipe.execute()
        self.stats["dropped"] += len(dropped)

    # -- webhooks -------------------------------------------------------------------

    async def _webhook_loop(self) -> None:
        interval = self.settings.ticker_interval_ms / 1000
        async with aiohttp.ClientSession() as session:
            while not self._stopping.is_set():
                try:
                    await self.dispatcher.run_once(session)
                except RedisError as exc:
                    self._log.warning("webhooks: redis error", error=str(exc))
                await asyncio.sleep(interval)

    # -- tick -----------------------------------------------------------------------

    async def _tick_loop(self) -> None:
        interval = self.settings.ticker_interval_ms / 1000
        while not self._stopping.is_set():
            started = time.monotonic()
            try:
                await self.tick()
            except RedisError as exc:
                self._log.warning("tick: redis error", error=str(exc))
            except Exception:  # a bug must not stop the ticks of every partition
                self._log.exception("tick failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self._stopping.wait(), max(0.0, interval - (time.monotonic() - started))
                )

    async def tick(self) -> int:
        """Apply every buffered event at or below the watermark; returns events applied."""
        now = await self.clock.now_ms()
        watermark = now - self.settings.window_size_ms
        ready = {p: b.pop_ready(watermark) for p, b in list(self.buffers.items())}
        ready = {p: batch for p, batch in ready.items() if batch}
        popped = {(p, entry_id) for p, batch in ready.items() for entry_id, _ in batch}
        self._in_flight |= popped
        try:
            applied = await self._apply_ready(ready, ApplyContext(now, self.worker_id))
        finally:
            # Whatever failed to settle is back in its buffer, or pending in the group
            # for reclaim_pending once idle: never both in flight and forgotten.
            self._in_flight -= popped
        if self.room > 0:
            self._has_room.set()
        # Segments: once per touched profile per tick, then whatever time made due.
        touched, self._touched = self._touched, set()
        if touched:
            self.stats["transitions"] += len(await self.engine.evaluate(touched, now))
        self.stats["transitions"] += await self.sweeper.run_once()
        return applied

    async def _apply_ready(self, ready: dict[int, Chunk], ctx: ApplyContext) -> int:
        """One pipelined round trip of ``apply_batch`` calls, then the failures sorted out."""
        calls: list[tuple[int, Chunk]] = []
        suspects: list[tuple[int, Chunk, str]] = []  # retried event by event
        async with self.redis.pipeline(transaction=False) as pipe:
            for p, batch in ready.items():
                size = self.settings.batch_size
                for start in range(0, len(batch), size):
                    chunk = batch[start : start + size]
                    try:
                        await queue_apply(pipe, self.scripts, self.settings, ctx, p, chunk)
                    except (ValueError, TypeError, OverflowError) as exc:
                        suspects.append((p, chunk, f"cannot encode the batch: {exc}"))
                        continue
                    calls.append((p, chunk))
            for name, value in self._unflushed.items():
                pipe.hincrby(keys.METRICS, name, value)
            pipe.hset(keys.METRICS_BUFFERED, self.worker_id, self.buffered)
            try:
                replies = await pipe.execute(raise_on_error=False)
            except RedisError:
                self._requeue(calls + [(p, chunk) for p, chunk, _ in suspects])
                raise
        self.stats.update(self._unflushed)
        self._unflushed.clear()
        applied = 0
        for (p, chunk), reply in zip(calls, replies, strict=False):
            if isinstance(reply, Exception) and is_poison(reply):
                suspects.append((p, chunk, str(reply)))
            elif isinstance(reply, Exception):
                self._log.warning("apply refused by redis; retried next tick", error=str(reply))
                self._requeue([(p, chunk)])  # OOM, READONLY...: nothing wrong with the events
            else:
                result = parse_result(reply)
                if result.lease_lost:
                    self._forget(p)
                else:
                    applied += self._count(result)
        for index, (p, chunk, error) in enumerate(suspects):
            try:
                applied += await self._apply_one_by_one(p, chunk, ctx, error)
            except BaseException:
                self._requeue([(q, c) for q, c, _ in suspects[index + 1 :]])
                raise
        return applied

    def _requeue(self, calls: list[tuple[int, Chunk]]) -> None:
        """The round trip failed: the events go back to their buffers for the next tick."""
        for p, chunk in calls:
            buffer = self.buffers.get(p)
            if buffer is not None:
                for entry_id, event in chunk:
                    buffer.push(event.ts, event.eventId, entry_id, event)

    def _count(self, result: BatchResult) -> int:
        self._touched.update(result.profiles)
        self.stats["applied"] += result.applied
        self.stats["duplicates"] += result.duplicates
        return result.applied

    async def _apply_one_by_one(
        self, partition: int, chunk: Chunk, ctx: ApplyContext, error: str
    ) -> int:
        """A batch failed because of an event: apply its events alone, parking the guilty.

        An event is parked in cdp:events:dead only when it fails on its own for a
        reason of its own (the script answers CDP_POISON, or it cannot be encoded);
        when Redis refuses the call for any other reason, the rest of the chunk goes
        back to the buffer.
        """
        self._log.error(
            "apply failed, retrying event by event",
            partition=partition,
            error=error,
            events=len(chunk),
        )
        applied = 0
        for index, item in enumerate(chunk):
            reply: Any = None
            reason: str | None = None
            try:
                async with self.redis.pipeline(transaction=False) as pipe:
                    await queue_apply(pipe, self.scripts, self.settings, ctx, partition, [item])
                    (reply,) = await pipe.execute(raise_on_error=False)
            except (ValueError, TypeError, OverflowError) as exc:
                reason = f"cannot encode the event: {exc}"
            except RedisError:
                self._requeue([(partition, chunk[index:])])
                raise
            if isinstance(reply, Exception):
                if not is_poison(reply):
                    self._log.warning("apply refused by redis; retried next tick", error=str(reply))
                    self._requeue([(partition, chunk[index:])])
                    return applied
                reason = str(reply)
            if reason is not None:
                eid, event = item
                self._log.error(
                    "event parked in dead-letter stream",
                    partition=partition,
                    eventId=event.eventId,
                    error=reason,
                )
                try:
                    await self._drop(
                        partition,
                        [(eid, None, msgspec.json.encode(event), f"apply failed: {reason}")],
                    )
                except RedisError:
                    self._requeue([(partition, chunk[index:])])
                    raise
                continue
            result = parse_result(reply)
            if result.lease_lost:
                self._forget(partition)
                return applied
            applied += self._count(result)
        return applied

"""The tick loop: apply what the watermark has passed, then evaluate segments.

A tick pops what is ready (ts <= now - window-size) from each buffer, at most
``TICK_BATCHES`` x batch-size events in all (so a backlog is applied in round trips of
bounded size, never one that outlives redis-timeout), and applies it with one
pipelined round trip of ``apply_batch`` calls (``cdp.pipeline.apply``), which
acknowledge what they applied; the metrics go in the same round trip. A call that
Redis refused (OOM, READONLY, a lost connection) goes back to the buffer for the next
tick; one the script refused as CDP_POISON is applied again event by event and the
guilty event parked (``workers.dead_letters``). The profiles the ticks touched are
evaluated against the segments (once each) ticker-interval after the first of them was
applied (half lease-ttl while a backlog is applied: ``_evaluation_due``; and at the
last tick, when stopping); once per ticker-interval, if this worker is the sweeper,
the due-time sweep and backfills run (``workers.roles``), and the histograms observed
since the last time (``cdp_apply_batch_duration_seconds``: each apply round trip, the
tick's pipeline with the batch protocol, each slice's ``apply_partition`` with the
profile protocol; ``cdp_event_freshness_seconds`` and
``cdp_event_pipeline_latency_seconds``: the clock once the apply answered minus the
event's ts, and minus its receivedAt, per applied live event) are added to their Redis
hashes (``cdp.histograms.Observed``), one round trip of one atomic script per histogram.

When: the next tick comes when the watermark passes the earliest buffered event
(its ts + window-size, estimated from the clock read at the last tick and the
monotonic time since), at once when the last tick left ready events behind or a late
event arrives (the read loop sets ``state.wake``), and after ticker-interval at the
latest. Two ticks are at least ``MIN_SPACING_S`` apart, so a steady stream is still
applied in batches rather than one round trip per event.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass

from redis.exceptions import RedisError, ResponseError

from cdp import keys
from cdp.clock import Clock
from cdp.connect import Client, uses_profile_protocol
from cdp.events import StreamEvent
from cdp.histograms import APPLY_BATCH, FRESHNESS, PIPELINE_LATENCY, Observed
from cdp.pipeline.apply import ApplyContext, queue_apply
from cdp.pipeline.profile_apply import ProtocolBusy, apply_partition
from cdp.scripts import BatchResult, Scripts, is_poison
from cdp.segments.engine import SegmentEngine
from cdp.settings import Settings
from workers.dead_letters import DeadLetters
from workers.roles import Roles
from workers.state import Chunk, WorkerState

# Events per tick: at most this many batch-size batches (one round trip).
TICK_BATCHES = 20
# The least time between two ticks: wake-ups closer than this are coalesced.
MIN_SPACING_S = 0.025


@dataclass(frozen=True, slots=True)
class _ClockRead:
    """The clock as the last tick read it, and the monotonic time it was read at."""

    now_ms: int
    monotonic: float


class Ticker:
    def __init__(
        self,
        redis: Client,
        scripts: Scripts,
        settings: Settings,
        clock: Clock,
        state: WorkerState,
        dead_letters: DeadLetters,
        engine: SegmentEngine,
        roles: Roles,
    ) -> None:
        self.redis = redis
        self.scripts = scripts
        self.settings = settings
        self.clock = clock
        self.state = state
        self.dead_letters = dead_letters
        self.engine = engine
        self.roles = roles
        self._touched: set[str] = set()  # profiles applied since the last evaluation
        self._interval_s = settings.ticker_interval_ms / 1000
        self._last_periodic = -float("inf")  # the last sweep and metrics flush
        self._clock_read = _ClockRead(0, 0.0)  # the last tick's clock
        self._left_behind = False  # the last tick left ready events in a buffer
        self._turn = 0
        self._touched_since = 0.0  # when the first profile of ``_touched`` was applied
        self.profile_protocol = uses_profile_protocol(redis, settings)
        dead_letters.profile_protocol = self.profile_protocol
        self.apply_seconds = Observed(APPLY_BATCH)
        self.freshness = Observed(FRESHNESS)
        self.pipeline_latency = Observed(PIPELINE_LATENCY)

    async def run(self) -> None:
        state = self.state
        interval = self.settings.ticker_interval_ms / 1000
        while not state.stopping.is_set():
            started = time.monotonic()
            try:
                await self.tick()
            except RedisError as exc:
                state.log.warning("tick: redis error", error=str(exc))
            except Exception:  # a bug must not stop the ticks of every partition
                state.log.exception("tick failed")
            await self._wait_next(started, interval)
        await self._evaluate_left()
        try:
            await self.flush_histograms()
        except RedisError as exc:
            state.log.warning("last histogram flush: redis error", error=str(exc))

    async def _evaluate_left(self) -> None:
        """Stopping: evaluate the profiles applied since the last evaluation (else the
        sweeper does, once they fall due)."""
        touched, self._touched = self._touched, set()
        if touched:
            try:
                now = await self.clock.now_ms()
                self.state.stats["transitions"] += len(await self.engine.evaluate(touched, now))
            except RedisError as exc:
                self.state.log.warning("last evaluation: redis error", error=str(exc))

    async def _wait_next(self, started: float, interval: float) -> None:
        """Until the next tick is due (``next_tick_at``), woken by the read loop."""
        state = self.state
        while not state.stopping.is_set():
            state.wake.clear()
            delay = self.next_tick_at(started, interval) - time.monotonic()
            if delay <= 0:
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(state.wake.wait(), delay)

    def next_tick_at(self, started: float, interval: float) -> float:
        """The monotonic time of the next tick, for the tick that started at ``started``."""
        latest = min(started + interval, self._evaluation_at())
        if self._left_behind:
            due = started
        else:
            heads = [h for b in self.state.buffers.values() if (h := b.earliest()) is not None]
            if not heads:
                return latest
            read = self._clock_read
            due = read.monotonic + (min(heads) + self.settings.window_size_ms - read.now_ms) / 1000
        return min(latest, max(started + MIN_SPACING_S, due))

    async def tick(self) -> int:
        """Apply buffered events at or below the watermark (at most ``TICK_BATCHES``
        batches of them); returns events applied."""
        state = self.state
        now = await self.clock.now_ms()
        self._clock_read = _ClockRead(now, time.monotonic())
        watermark = now - self.settings.window_size_ms
        budget = self.settings.batch_size * TICK_BATCHES
        owned = sorted(state.buffers)
        first = self._turn % len(owned) if owned else 0
        self._turn += 1  # the partition served first moves, so none waits behind others
        ready: dict[int, Chunk] = {}
        self._left_behind = False
        for p in owned[first:] + owned[:first]:
            if budget <= 0:
                self._left_behind = True
                break
            batch = state.buffers[p].pop_ready(watermark, budget)
            if batch:
                ready[p] = batch
                budget -= len(batch)
        if budget <= 0:
            self._left_behind = True  # maybe more ready: tick again soon
        popped = state.put_in_flight(ready)
        events = sum(len(batch) for batch in ready.values())
        periodic = time.monotonic() - self._last_periodic >= self._interval_s
        try:
            applied = 0
            if ready or periodic:
                applied = await self._apply_ready(ready, ApplyContext(now, state.worker_id))
        finally:
            # Whatever failed to settle is back in its buffer, or pending in the group
            # for reclaim_pending once idle: never both in flight and forgotten.
            state.take_off(popped, events)
        if state.room > 0:
            state.has_room.set()
        if self._touched and (self._evaluation_due() or state.stopping.is_set()):
            touched, self._touched = self._touched, set()
            state.stats["transitions"] += len(await self.engine.evaluate(touched, now))
        if periodic:
            self._last_periodic = time.monotonic()
            state.stats["transitions"] += await self.roles.sweep()
            await self.flush_histograms()
        return applied

    async def flush_histograms(self) -> None:
        """Add the histograms observed since the last flush to Redis (one round trip, one
        atomic ``histogram_add`` per histogram). One whose script answered an error is
        kept for the next flush (it did not land); when the round trip itself failed,
        each may have landed or not: dropped, never counted twice."""
        histograms = (self.apply_seconds, self.freshness, self.pipeline_latency)
        observed = [h for h in histograms if h.count]
        if not observed:
            return
        async with self.redis.pipeline(transaction=False) as pipe:
            for histogram in observed:
                await self.scripts.histogram_add.queue(
                    pipe, keys.histogram(histogram.spec.key), histogram.sum, histogram.increments()
                )
            try:
                replies = await pipe.execute(raise_on_error=False)
            except BaseException:
                for histogram in observed:
                    histogram.clear()
                raise
        for histogram, reply in zip(observed, replies, strict=True):
            if not isinstance(reply, Exception):
                histogram.clear()

    def _evaluation_due(self) -> bool:
        """Evaluate the profiles touched since the last evaluation now?

        Once per ticker-interval (ticks come more often: a profile touched by several
        is read once); while a backlog is applied (the last tick left ready events
        behind), every half lease-ttl, as the apply marked them due for the sweeper at
        lease-ttl: a profile touched all along the backlog is read a few times, not
        once a second.
        """
        return time.monotonic() >= self._evaluation_at()

    def _evaluation_at(self) -> float:
        """The monotonic time ``_evaluation_due`` becomes true (inf: nothing touched)."""
        if not self._touched:
            return float("inf")
        wait = self.settings.lease_ttl_ms / 2000 if self._left_behind else self._interval_s
        return self._touched_since + wait

    async def _apply_ready(self, ready: dict[int, Chunk], ctx: ApplyContext) -> int:
        """One pipelined round trip of ``apply_batch`` calls, then the failures sorted out."""
        if self.profile_protocol:
            return await self._apply_profiles(ready, ctx)
        state = self.state
        calls: list[tuple[int, Chunk]] = []
        suspects: list[tuple[int, Chunk, str]] = []  # retried event by event
        async with self.redis.pipeline(transaction=False) as pipe:
            for p, batch in ready.items():
                size = self.settings.batch_size
                for start in range(0, len(batch), size):
                    chunk = batch[start : start + size]
                    sent = state.script_chunk(p, chunk)
                    try:
                        await queue_apply(pipe, self.scripts, self.settings, ctx, p, sent)
                    except (ValueError, TypeError, OverflowError) as exc:
                        suspects.append((p, chunk, f"cannot encode the batch: {exc}"))
                        continue
                    calls.append((p, chunk))
            for (p, name), value in state.unflushed.items():
                pipe.hincrby(keys.metrics(p), name, value)
            pipe.hset(keys.METRICS_BUFFERED, state.worker_id, state.buffered)
            sent_at = time.monotonic()
            try:
                replies = await pipe.execute(raise_on_error=False)
            except RedisError:
                state.requeue(calls + [(p, chunk) for p, chunk, _ in suspects])
                raise
            elapsed = time.monotonic() - sent_at
        if calls:
            self.apply_seconds.observe(elapsed)  # one round trip, however many slices
        applied_ms = await self._applied_ms(ctx)
        for (_, name), value in state.unflushed.items():
            state.stats[name] += value
        state.unflushed.clear()
        applied = 0
        for (p, chunk), reply in zip(calls, replies, strict=False):
            if isinstance(reply, Exception) and is_poison(reply):
                suspects.append((p, chunk, str(reply)))
            elif isinstance(reply, Exception):
                state.log.warning("apply refused by redis; retried next tick", error=str(reply))
                state.requeue([(p, chunk)])  # OOM, READONLY...: nothing wrong with the events
            else:
                result = self.scripts.apply_batch.decode(reply)
                applied += self._settled(p, chunk, result, applied_ms)
        for index, (p, chunk, error) in enumerate(suspects):
            try:
                applied += await self.dead_letters.retry_alone(p, chunk, ctx, error, self._count)
            except BaseException:
                state.requeue([(q, c) for q, c, _ in suspects[index + 1 :]])
                raise
        await self._acknowledge_completed()
        return applied

    async def _apply_profiles(self, ready: dict[int, Chunk], ctx: ApplyContext) -> int:
        """The profile protocol (``cdp.pipeline.profile_apply``): each batch-size slice
        of a partition's ready events through ``apply_partition``, one after the other;
        a slice refused as CDP_POISON (or that cannot be encoded) is applied again event
        by event, a ``ProtocolBusy`` one goes back to the buffer for the next tick."""
        state = self.state
        calls = [
            (p, batch[start : start + self.settings.batch_size])
            for p, batch in ready.items()
            for start in range(0, len(batch), self.settings.batch_size)
        ]
        try:
            await self._flush_metrics()
        except RedisError:
            state.requeue(calls)
            raise
        applied = 0
        for index, (p, chunk) in enumerate(calls):
            error = ""
            sent_at = time.monotonic()
            try:
                result = await apply_partition(
                    self.redis, self.scripts, self.settings, ctx, p, state.script_chunk(p, chunk)
                )
            except (ValueError, TypeError, OverflowError) as exc:
                error = f"cannot encode the batch: {exc}"
            except ProtocolBusy as exc:
                state.log.warning("apply not resolved; retried next tick", error=str(exc))
                state.requeue([(p, chunk)])
                continue
            except ResponseError as exc:
                if not is_poison(exc):
                    state.log.warning("apply refused by redis; retried next tick", error=str(exc))
                    state.requeue([(p, chunk)])
                    continue
                error = str(exc)
            except BaseException:
                state.requeue(calls[index:])
                raise
            try:
                if error:
                    applied += await self.dead_letters.retry_alone(
                        p, chunk, ctx, error, self._count
                    )
                else:
                    self.apply_seconds.observe(time.monotonic() - sent_at)
                    applied += self._settled(p, chunk, result, await self._applied_ms(ctx))
            except BaseException:
                state.requeue(calls[index + 1 :])
                raise
        await self._acknowledge_completed()
        return applied

    async def _flush_metrics(self) -> None:
        """The worker's unflushed counters and its buffered gauge, one round trip."""
        state = self.state
        async with self.redis.pipeline(transaction=False) as pipe:
            for (p, name), value in state.unflushed.items():
                pipe.hincrby(keys.metrics(p), name, value)
            pipe.hset(keys.METRICS_BUFFERED, state.worker_id, state.buffered)
            await pipe.execute()
        for (_, name), value in state.unflushed.items():
            state.stats[name] += value
        state.unflushed.clear()

    async def _acknowledge_completed(self) -> None:
        """XACK the entries of several events whose events are all settled now. If this
        fails they stay pending, are claimed again once idle (``reclaim_pending``) and
        every event of theirs is then found a duplicate."""
        state = self.state
        completed, state.completed = state.completed, []
        if not completed:
            return
        by_partition: dict[int, list[str]] = {}
        for p, entry_id in completed:
            by_partition.setdefault(p, []).append(entry_id)
        async with self.redis.pipeline(transaction=False) as pipe:
            for p, ids in by_partition.items():
                pipe.xack(keys.stream(p), keys.GROUP, *ids)
            await pipe.execute()

    async def _applied_ms(self, ctx: ApplyContext) -> int:
        """The clock read once an apply answered (free on the system clock); should the
        read fail (a test's Redis clock), the tick's read plus the monotonic time since."""
        try:
            return await self.clock.now_ms()
        except RedisError:
            return ctx.now_ms + int((time.monotonic() - self._clock_read.monotonic) * 1000)

    def _settled(self, partition: int, chunk: Chunk, result: BatchResult, applied_ms: int) -> int:
        """A slice's result: its entries settled (or the partition forgotten when its
        lease was lost); returns events applied. ``applied_ms``: the clock once the
        apply answered, for the freshness and pipeline-latency histograms."""
        if result.lease_lost:
            self.state.forget(partition)
            return 0
        for entry_id, _ in chunk:
            self.state.settle(partition, entry_id)
        for event in fresh_events([event for _, event in chunk], result):
            self.freshness.observe(max(0, applied_ms - event.ts) / 1000)
            self.pipeline_latency.observe(max(0, applied_ms - event.receivedAt) / 1000)
        return self._count(result)

    def _count(self, result: BatchResult) -> int:
        if result.profiles and not self._touched:
            self._touched_since = time.monotonic()
        self._touched.update(result.profiles)
        self.state.stats["applied"] += result.applied
        self.state.stats["duplicates"] += result.duplicates
        return result.applied


def fresh_ts(events: list[StreamEvent], result: BatchResult) -> list[int]:
    """The ts of ``fresh_events``."""
    return [event.ts for event in fresh_events(events, result)]


def fresh_events(events: list[StreamEvent], result: BatchResult) -> list[StreamEvent]:
    """The events of a slice its apply applied live (not mode=import), for the
    freshness and pipeline-latency histograms. The reply names one profile per such
    event, in order, but not which event: when it names as many as the slice has live
    events (the usual case), every one was applied; otherwise (some were duplicates,
    discarded as erased, or named no identifier) the slice is left out rather than
    guessed at."""
    live = [event for event in events if event.mode != "import"]
    return live if len(live) == len(result.profiles) else []

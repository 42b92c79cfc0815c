"""The tick loop: apply what the watermark has passed, then evaluate segments.

Every ticker-interval, pop what is ready (ts <= now - window-size) from each buffer
and apply it with one pipelined round trip of ``apply_batch`` calls
(``cdp.pipeline.apply``), which acknowledge what they applied; the metrics go in the
same round trip. A call that Redis refused (OOM, READONLY, a lost connection) goes
back to the buffer for the next tick; one the script refused as CDP_POISON is applied
again event by event and the guilty event parked (``workers.dead_letters``). Then the
profiles the tick touched are evaluated against the segments (once each), and, if
this worker is the sweeper, the due-time sweep and backfills run (``workers.roles``).
"""

from __future__ import annotations

import asyncio
import contextlib
import time

from redis.asyncio import Redis
from redis.exceptions import RedisError

from cdp import keys
from cdp.clock import Clock
from cdp.pipeline.apply import ApplyContext, queue_apply
from cdp.scripts import BatchResult, Scripts, is_poison
from cdp.segments.engine import SegmentEngine
from cdp.settings import Settings
from workers.dead_letters import DeadLetters
from workers.roles import Roles
from workers.state import Chunk, WorkerState


class Ticker:
    def __init__(
        self,
        redis: Redis,
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
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    state.stopping.wait(), max(0.0, interval - (time.monotonic() - started))
                )

    async def tick(self) -> int:
        """Apply every buffered event at or below the watermark; returns events applied."""
        state = self.state
        now = await self.clock.now_ms()
        watermark = now - self.settings.window_size_ms
        ready = {p: b.pop_ready(watermark) for p, b in list(state.buffers.items())}
        ready = {p: batch for p, batch in ready.items() if batch}
        popped = {(p, entry_id) for p, batch in ready.items() for entry_id, _ in batch}
        state.in_flight |= popped
        try:
            applied = await self._apply_ready(ready, ApplyContext(now, state.worker_id))
        finally:
            # Whatever failed to settle is back in its buffer, or pending in the group
            # for reclaim_pending once idle: never both in flight and forgotten.
            state.in_flight -= popped
        if state.room > 0:
            state.has_room.set()
        # Segments: once per touched profile per tick, then whatever time made due.
        touched, self._touched = self._touched, set()
        if touched:
            state.stats["transitions"] += len(await self.engine.evaluate(touched, now))
        state.stats["transitions"] += await self.roles.sweep()
        return applied

    async def _apply_ready(self, ready: dict[int, Chunk], ctx: ApplyContext) -> int:
        """One pipelined round trip of ``apply_batch`` calls, then the failures sorted out."""
        state = self.state
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
            for name, value in state.unflushed.items():
                pipe.hincrby(keys.METRICS, name, value)
            pipe.hset(keys.METRICS_BUFFERED, state.worker_id, state.buffered)
            try:
                replies = await pipe.execute(raise_on_error=False)
            except RedisError:
                state.requeue(calls + [(p, chunk) for p, chunk, _ in suspects])
                raise
        state.stats.update(state.unflushed)
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
                if result.lease_lost:
                    state.forget(p)
                else:
                    applied += self._count(result)
        for index, (p, chunk, error) in enumerate(suspects):
            try:
                applied += await self.dead_letters.retry_alone(p, chunk, ctx, error, self._count)
            except BaseException:
                state.requeue([(q, c) for q, c, _ in suspects[index + 1 :]])
                raise
        return applied

    def _count(self, result: BatchResult) -> int:
        self._touched.update(result.profiles)
        self.state.stats["applied"] += result.applied
        self.state.stats["duplicates"] += result.duplicates
        return result.applied

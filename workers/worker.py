"""The worker: read owned partitions, buffer to the watermark, apply, acknowledge.

Four loops share one process, one event loop and one ``WorkerState``
(``workers.state``: the owned partitions' buffers and what the tick has in hand):

- ``leases`` (``workers.housekeeping``): heartbeat and rebalance every lease-ttl/3,
  claim what is pending for gained partitions and what nobody holds, trim;
- ``read`` (``workers.reading``): XREADGROUP into the buffers, under ``max-buffer``;
- ``tick`` (``workers.ticking``): apply what the watermark passed, evaluate the
  touched profiles, sweep if this worker is the sweeper (``workers.roles``);
- ``webhooks`` (``workers.roles``): deliver segment events if this worker is the
  dispatcher.

Dropped and guilty events go to their streams through ``workers.dead_letters``.

Starting (``prepare``: the consumer groups, the scripts on every master) retries a
Redis error with backoff: a worker started while a cluster fails a master over waits
for the promotion instead of exiting.

Stopping (SIGTERM/SIGINT) ends the loops in a stated order (``Loops.stop``: the
webhooks, then reading at once, then the leases loop), lets the tick loop finish
the tick in hand, hands the leases back and logs one summary line; whatever was
buffered stays pending for the next owner.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
import uuid
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any

from redis.exceptions import RedisError

from cdp.clock import Clock
from cdp.connect import Client
from cdp.pipeline.leases import LeaseManager
from cdp.scripts import Scripts, load_scripts
from cdp.segments.engine import SegmentEngine
from cdp.settings import Settings
from workers.dead_letters import DeadLetters
from workers.housekeeping import Housekeeper, ensure_groups
from workers.reading import Reader
from workers.roles import Roles
from workers.state import WorkerState
from workers.ticking import Ticker

START_RETRY_FIRST_S, START_RETRY_MAX_S = 0.1, 5.0  # the start's retries on a Redis error

Task = asyncio.Task[None]


def new_worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


@dataclass(frozen=True, slots=True)
class Loops:
    """The worker's running loops, by name."""

    leases: Task
    read: Task
    tick: Task
    webhooks: Task

    async def stop(self) -> None:
        """Webhooks first, then reading at once, then the leases loop (each cancelled and
        awaited in turn); the tick loop is not cancelled: it finishes the tick in hand."""
        for task in (self.webhooks, self.read, self.leases):
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        await asyncio.gather(self.tick, return_exceptions=True)


class Worker:
    def __init__(
        self, redis: Client, settings: Settings, clock: Clock, worker_id: str | None = None
    ) -> None:
        self.redis = redis
        self.settings = settings
        self.worker_id = worker_id or new_worker_id()
        self.state = WorkerState(self.worker_id, settings.max_buffer)
        scripts = Scripts(redis)
        engine = SegmentEngine(redis, scripts, settings)
        self.leases = LeaseManager(
            redis, scripts, self.worker_id, settings.partitions, settings.lease_ttl_ms
        )
        self.dead_letters = DeadLetters(redis, scripts, settings, self.state)
        self.reader = Reader(redis, settings, self.state, self.dead_letters)
        self.housekeeper = Housekeeper(redis, settings, self.state, self.leases, self.reader)
        self.roles = Roles(redis, scripts, engine, settings, clock, self.state)
        self.ticker = Ticker(
            redis, scripts, settings, clock, self.state, self.dead_letters, engine, self.roles
        )

    # What tests and the summary line look at.
    @property
    def owned(self) -> set[int]:
        return self.state.owned

    @property
    def buffered(self) -> int:
        return self.state.buffered

    async def rebalance(self) -> None:
        await self.housekeeper.rebalance()

    async def reclaim_pending(self) -> int:
        return await self.housekeeper.reclaim_pending()

    async def trim(self) -> None:
        await self.housekeeper.trim()

    async def tick(self) -> int:
        return await self.ticker.tick()

    def stop(self) -> None:
        self.state.stop()

    async def prepare(self) -> bool:
        """The consumer groups, and the scripts on every master (no NOSCRIPT on first
        calls), retried with backoff on a Redis error until done (True) or stopped: a
        worker starting while a cluster fails a master over, or while a slot moves,
        waits for it instead of exiting."""
        delay = START_RETRY_FIRST_S
        while not self.state.stopping.is_set():
            try:
                await ensure_groups(self.redis, self.settings.partitions)
                await load_scripts(self.redis)
                return True
            except RedisError as exc:
                self.state.log.warning("start: redis error", error=str(exc), retry_in_s=delay)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.state.stopping.wait(), delay)
            delay = min(delay * 2, START_RETRY_MAX_S)
        return False

    async def run(self) -> None:
        if not await self.prepare():
            return
        log = self.state.log
        log.info("worker started", partitions=self.settings.partitions)
        started = time.monotonic()
        loops = Loops(
            leases=self._start(self.housekeeper.run()),
            read=self._start(self.reader.run()),
            tick=self._start(self.ticker.run()),
            webhooks=self._start(self.roles.run_webhooks()),
        )
        try:
            await self.state.stopping.wait()
        finally:
            await loops.stop()
            with contextlib.suppress(RedisError):
                await self.leases.release_all(self.owned)
                await self.roles.release()
            log.info(
                "worker stopped",
                seconds=round(time.monotonic() - started, 1),
                left_pending=self.buffered,
                **dict(self.state.stats),
            )

    def _start(self, loop: Coroutine[Any, Any, None]) -> Task:
        return asyncio.create_task(self._guarded(loop))

    async def _guarded(self, loop: Coroutine[Any, Any, None]) -> None:
        """A loop that dies stops the worker (its leases go to others), never silently."""
        try:
            await loop
        except asyncio.CancelledError:
            raise
        except Exception:
            self.state.log.exception("worker loop failed; stopping so that others take over")
            self.stop()

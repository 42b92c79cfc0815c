"""The roles one worker plays for all: the segment sweeper and the webhook dispatcher.

Each role has a lease (``cdp:lease:sweeper``, ``cdp:lease:webhooks``): whatever the
number of workers, exactly one plays it, and a dead holder's role moves once its
lease expires.

- sweeper (``cdp.segments.sweeper``): the due-time sweep and definition backfills,
  run at the end of every tick (``sweep``), then the cross-slot merges whose journal
  is older than lease-ttl (their process presumably dead) are finished
  (``cdp.merge.resume_open``), then the erasure jobs whose runner died
  (``cdp.erasure.resume_open``: each under its own lease), then the metrics' tail
  counter and history sampler (``cdp.metrics_tail``);
- webhook dispatcher (``cdp.segments.webhooks``): delivers segment events, in a loop
  of its own every ticker-interval (``run_webhooks``).
"""

from __future__ import annotations

import asyncio

import aiohttp
from redis.exceptions import RedisError

from cdp import erasure
from cdp.clock import Clock
from cdp.connect import Client
from cdp.merge import resume_open
from cdp.metrics_tail import MetricsRole
from cdp.scripts import Scripts
from cdp.segments.engine import SegmentEngine
from cdp.segments.sweeper import Sweeper
from cdp.segments.webhooks import Dispatcher
from cdp.settings import Settings
from workers.state import WorkerState


class Roles:
    def __init__(
        self,
        redis: Client,
        scripts: Scripts,
        engine: SegmentEngine,
        settings: Settings,
        clock: Clock,
        state: WorkerState,
    ) -> None:
        self.redis = redis
        self.scripts = scripts
        self.settings = settings
        self.clock = clock
        self.state = state
        worker_id = state.worker_id
        self.sweeper = Sweeper(redis, scripts, engine, clock, worker_id, settings.lease_ttl_ms)
        self.dispatcher = Dispatcher(redis, scripts, settings, clock, worker_id)
        self.metrics = MetricsRole(redis, scripts, settings, state.log)

    async def sweep(self) -> int:
        """One sweep if this worker is the sweeper, the abandoned merges finished, then
        the abandoned erasure jobs; returns transitions emitted."""
        emitted = await self.sweeper.run_once()
        if self.sweeper.lease.holding:
            now = await self.clock.now_ms()
            settings = self.settings
            resumed = await resume_open(
                self.redis, self.scripts, settings, now, settings.lease_ttl_ms
            )
            if resumed:
                self.state.log.info("abandoned merges resumed", merges=resumed)
            await erasure.resume_open(self.redis, self.scripts, settings, self.state.worker_id)
            await self.metrics.run()
        return emitted

    async def run_webhooks(self) -> None:
        interval = self.settings.ticker_interval_ms / 1000
        async with aiohttp.ClientSession() as session:
            while not self.state.stopping.is_set():
                try:
                    await self.dispatcher.run_once(session)
                except RedisError as exc:
                    self.state.log.warning("webhooks: redis error", error=str(exc))
                await asyncio.sleep(interval)

    async def release(self) -> None:
        """Hand both role leases back (if held), for another worker to take at once."""
        await self.sweeper.release()
        await self.dispatcher.release()

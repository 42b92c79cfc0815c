"""Settings for a worker run inside the test process (``workers.worker.Worker``), where
a test needs to reach into its loops: the Redis-driven clock, fast ticks, a 1 s lease."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from cdp.settings import Settings, load_settings
from workers.worker import Worker


def worker_settings(redis_url: str, **overrides: object) -> Settings:
    base = {
        "redis_url": redis_url,
        "clock": "redis",
        "ticker_interval_ms": 20,
        "lease_ttl_ms": 1000,
    }
    return load_settings(env={}, **(base | overrides))


@contextlib.asynccontextmanager
async def running(worker: Worker) -> AsyncIterator[Worker]:
    """``worker.run()`` as a task for the block; stopped (its tick finished) at the end."""
    task = asyncio.create_task(worker.run())
    try:
        yield worker
    finally:
        worker.stop()
        await task

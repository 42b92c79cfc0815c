"""``cdp worker`` / ``python -m workers``: settings → logging → Redis → Worker.run()."""

from __future__ import annotations

import asyncio
import signal

from redis.asyncio import Redis

from cdp.clock import make_clock
from cdp.logs import configure_logging
from cdp.pipeline.worker import Worker
from cdp.settings import Settings


async def run_worker(settings: Settings, worker_id: str | None = None) -> None:
    redis = Redis.from_url(settings.redis_url, socket_connect_timeout=2, health_check_interval=10)
    worker = Worker(redis, settings, make_clock(settings.clock, redis), worker_id)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, worker.stop)
    try:
        await worker.run()
    finally:
        await redis.aclose()


def main(settings: Settings, worker_id: str | None = None) -> None:
    configure_logging(settings.log_level, settings.log_format)
    asyncio.run(run_worker(settings, worker_id))

"""``cdp worker`` / ``python -m workers``: settings → logging → Redis (a cluster?) → Worker.run().

The worker holds up to max-buffer decoded events (and their dicts) in memory: with
the interpreter's default thresholds, a full collection every few thousand
allocations walks all of them again, which measured ~3 us of the ~5 us of decoding
and buffering an event. ``GC_THRESHOLDS`` makes the young generation larger and the
old ones rarer; what is alive at start-up is frozen out of collections. Nothing of
the worker relies on collection of cycles for correctness.
"""

from __future__ import annotations

import asyncio
import gc
import signal

import structlog

from cdp.clock import make_clock
from cdp.connect import redis_client, wait_for_redis
from cdp.logs import configure_logging
from cdp.settings import Settings
from workers.worker import Worker, new_worker_id


async def run_worker(settings: Settings, worker_id: str | None = None) -> None:
    worker_id = worker_id or new_worker_id()
    stopping = asyncio.Event()
    workers: list[Worker] = []

    def stop() -> None:
        stopping.set()
        for worker in workers:
            worker.stop()

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop)
    log = structlog.get_logger("cdp.worker").bind(worker=worker_id)
    # Redis first: whether it is a cluster decides which client the worker gets.
    reached = await wait_for_redis(settings, log, stopping)
    if reached is None:
        return
    redis = redis_client(settings, cluster=reached.cluster)
    try:
        workers.append(Worker(redis, settings, make_clock(settings.clock, redis), worker_id))
        if not stopping.is_set():  # a signal while it was being built
            await workers[0].run()
    finally:
        await redis.aclose()


GC_THRESHOLDS = (100_000, 50, 100)


def main(settings: Settings, worker_id: str | None = None) -> None:
    configure_logging(settings.log_level, settings.log_format)
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
    asyncio.run(run_worker(settings, worker_id))

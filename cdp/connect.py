"""Redis clients of the long-running processes, and waiting for Redis at start.

``redis_client(settings)`` is the client the API, the workers and ``cdp segments watch``
use: a command not answered within ``redis-timeout`` fails (the API answers 503, a
worker retries), instead of redis-py's own default. ``wait_for_redis`` pings until
Redis answers, with backoff and one log line per attempt, so the start order of Redis,
the API and the workers does not matter (compose, systemd and Kubernetes start them in
parallel; a Redis loading a large AOF answers LOADING for a while).
"""

from __future__ import annotations

import asyncio
import contextlib

import structlog
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from cdp.settings import Settings

FIRST_DELAY_S = 0.1
MAX_DELAY_S = 5.0


def redis_client(settings: Settings, *, blocking_ms: int = 0) -> Redis:
    """A client whose commands time out after redis-timeout (+ ``blocking_ms`` for a
    connection that waits in XREAD BLOCK)."""
    timeout = settings.redis_timeout_ms / 1000
    return Redis.from_url(
        settings.redis_url,
        socket_timeout=timeout + blocking_ms / 1000,
        socket_connect_timeout=timeout,
        health_check_interval=10,
    )


async def wait_for_redis(
    settings: Settings,
    log: structlog.typing.FilteringBoundLogger,
    stopping: asyncio.Event | None = None,
) -> bool:
    """PING until Redis answers: True then, False when ``stopping`` is set first."""
    timeout = settings.redis_timeout_ms / 1000
    # Its own client without retries: one attempt is one PING, one log line.
    probe = Redis.from_url(
        settings.redis_url,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), 0),
    )
    delay, attempt = FIRST_DELAY_S, 0
    stopping = stopping or asyncio.Event()
    try:
        while not stopping.is_set():
            attempt += 1
            try:
                await probe.ping()
            except RedisError as exc:  # refused, LOADING, timeout, wrong password...
                log.warning("waiting for redis", attempt=attempt, retry_in_s=delay, error=str(exc))
            else:
                if attempt > 1:
                    log.info("redis answers", attempts=attempt)
                return True
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), delay)
            delay = min(delay * 2, MAX_DELAY_S)
        return False
    finally:
        await probe.aclose()

"""The one source of time for ingest, workers and scripts.

Everything asks a Clock for ``now_ms()``; nothing else calls ``time.time()`` for event
semantics. ``SystemClock`` is the real time. ``RedisClock`` reads the time from the key
``cdp:clock`` (milliseconds since the epoch) so that a test can drive hours of event time
across several processes in milliseconds of wall time: set ``CDP_CLOCK=redis`` and
``SET cdp:clock <ms>``. It is a testing tool; production runs on the system clock.
"""

from __future__ import annotations

import time
from typing import Protocol

from cdp import keys
from cdp.connect import Client


def wall_ms() -> int:
    """Wall-clock milliseconds since the epoch: for bookkeeping (job times, trimming,
    leases), never for event semantics, which ask a Clock."""
    return time.time_ns() // 1_000_000


class Clock(Protocol):
    async def now_ms(self) -> int: ...


class SystemClock:
    async def now_ms(self) -> int:
        return wall_ms()


class RedisClock:
    """Time is whatever the test wrote to ``cdp:clock``; the system time until it does."""

    def __init__(self, redis: Client) -> None:
        self._redis = redis

    async def now_ms(self) -> int:
        raw = await self._redis.get(keys.CLOCK)
        return int(raw) if raw is not None else wall_ms()


def make_clock(kind: str, redis: Client) -> Clock:
    return RedisClock(redis) if kind == "redis" else SystemClock()

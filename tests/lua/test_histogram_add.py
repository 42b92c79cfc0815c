"""The workers' histogram flush (``workers.ticking.Ticker.flush_histograms``) and its
one-key script ``lua/histogram_add-1.lua`` on a real Redis: a flush lands whole per
histogram; one whose script answered an error is kept and lands at the next flush; one
whose round trip failed (it may have landed) is dropped, never counted twice."""

from __future__ import annotations

from typing import Any

import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from cdp import keys
from cdp.histograms import APPLY_BATCH, FRESHNESS, PIPELINE_LATENCY, Observed
from cdp.scripts import Scripts
from tests.support.lua import run_with_scripts
from workers.ticking import Ticker

run = run_with_scripts


def flusher(redis: Redis) -> Any:
    """A Ticker with only what flush_histograms uses."""
    ticker = object.__new__(Ticker)
    ticker.redis, ticker.scripts = redis, Scripts(redis)
    ticker.apply_seconds = Observed(APPLY_BATCH)
    ticker.freshness = Observed(FRESHNESS)
    ticker.pipeline_latency = Observed(PIPELINE_LATENCY)
    return ticker


async def stored(redis: Redis, key: str) -> dict[str, str]:
    raw = await redis.hgetall(keys.histogram(key))
    return {k.decode(): v.decode() for k, v in raw.items()}


def test_a_flush_adds_buckets_sum_and_count(redis_url: str) -> None:
    async def go(redis: Redis) -> None:
        ticker = flusher(redis)
        for value in (0.003, 0.003, 0.2):
            ticker.apply_seconds.observe(value)
        await ticker.flush_histograms()
        await ticker.flush_histograms()  # nothing new: nothing added again
        ticker.apply_seconds.observe(0.003)
        await ticker.flush_histograms()
        got = await stored(redis, "apply-batch")
        assert got == {"0.005": "3", "0.25": "1", "count": "4", "sum": got["sum"]}
        assert abs(float(got["sum"]) - 0.209) < 1e-9
        assert ticker.apply_seconds.count == 0
        assert await stored(redis, "freshness") == {}

    run(go, redis_url)


def test_a_histogram_whose_script_failed_is_kept_for_the_next_flush(redis_url: str) -> None:
    async def go(redis: Redis) -> None:
        ticker = flusher(redis)
        await redis.set(keys.histogram("freshness"), "not a hash")  # WRONGTYPE
        ticker.apply_seconds.observe(0.01)
        ticker.freshness.observe(2.0)
        await ticker.flush_histograms()
        assert (await stored(redis, "apply-batch"))["count"] == "1"  # landed, cleared
        assert ticker.apply_seconds.count == 0
        assert ticker.freshness.count == 1  # refused: kept
        await redis.delete(keys.histogram("freshness"))
        await ticker.flush_histograms()
        assert (await stored(redis, "freshness"))["count"] == "1"
        assert (await stored(redis, "apply-batch"))["count"] == "1"  # not twice

    run(go, redis_url)


def test_a_flush_whose_round_trip_failed_is_never_sent_again(redis_url: str) -> None:
    async def go(redis: Redis) -> None:
        gone = Redis.from_url("redis://127.0.0.1:1/0")  # nothing listens there
        try:
            ticker = flusher(gone)
            ticker.apply_seconds.observe(0.01)
            with pytest.raises(RedisConnectionError):
                await ticker.flush_histograms()
        finally:
            await gone.aclose()
        assert ticker.apply_seconds.count == 0  # may have landed: dropped
        ticker.redis, ticker.scripts = redis, Scripts(redis)
        await ticker.flush_histograms()
        assert await stored(redis, "apply-batch") == {}

    run(go, redis_url)

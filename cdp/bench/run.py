"""``run_bench``: the phases of ``cdp bench`` in order, then the report."""

from __future__ import annotations

import contextlib
import uuid
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from cdp import keys
from cdp.bench.http import check_api, last_merge_record, merge_records, send_and_wait
from cdp.bench.micro import cleanup, raw_redis
from cdp.bench.report import report
from cdp.bench.workload import plan
from cdp.clock import wall_ms
from cdp.errors import BenchError
from cdp.settings import Settings, format_duration


async def run_bench(
    settings: Settings,
    url: str,
    events: int,
    concurrency: int,
    users: int,
    merge_ratio: float = 0.0,
) -> None:
    """Measure the stack at ``url`` and the Redis at ``settings.redis_url``; print both."""
    if min(events, concurrency, users) < 1:
        raise BenchError("--events, --concurrency and --users must be at least 1")
    if not 0 <= merge_ratio <= 1:
        raise BenchError("--merge-ratio must be between 0 and 1")
    run, url = uuid.uuid4().hex[:8], url.rstrip("/")
    redis = Redis.from_url(settings.redis_url, socket_connect_timeout=2, socket_timeout=30)
    try:
        try:
            info = await redis.info()
        except RedisError as exc:
            raise BenchError(f"cannot reach Redis at {settings.redis_url}: {exc}") from None
        await check_api(url)
        workers = await redis.zcount(keys.WORKERS, wall_ms(), "+inf")
        warmup, specs = plan(run, events, users, merge_ratio)
        result: dict[str, Any] = {
            "run": run, "events": events, "concurrency": concurrency, "users": users,
            "merge_ratio": merge_ratio, "warmup_events": len(warmup),
            "window_size": format_duration(settings.window_size_ms), "workers": workers,
            "partitions": settings.partitions, "batch_size": settings.batch_size,
            "redis": info["redis_version"], "aof": bool(info.get("aof_enabled")),
        }  # fmt: skip
        if not workers:
            print("cdp bench: no live worker (cdp:workers): end-to-end not measured")
        if warmup:  # the profiles the merging ALIAS join must exist before they are sent
            done = await send_and_wait(redis, url, warmup, concurrency, settings, workers)
            result["warmup_seconds"] = done.get("e2e_seconds")
        merges_before = await last_merge_record(redis)
        result.update(await send_and_wait(redis, url, specs, concurrency, settings, workers))
        if workers:
            result.update(await merge_records(redis, merges_before, run))
            if result["alias_merges"] != len(warmup) // 2:
                print(
                    f"cdp bench: warning: {result['alias_merges']} merge records for"
                    f" {len(warmup) // 2} merging ALIAS events"
                )
        result.update(await raw_redis(redis, settings, run, events, users))
    finally:
        with contextlib.suppress(RedisError):
            await cleanup(redis, run)
        await redis.aclose()
    report(result)

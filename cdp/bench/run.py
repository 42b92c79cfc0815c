"""``run_bench``: the rows ``--only`` asks for (all of issue 10's by default), in order,
then the report. ``mixed`` (not in the default set) is the earlier ``cdp bench``: the
mixed workload end to end, the apply_batch micro-benchmarks and the merge cost.
``merges`` (not in the default set either) is the merge cost through the whole stack,
one Redis or a cluster (issue 11)."""

from __future__ import annotations

import contextlib
import shutil
import uuid
from dataclasses import dataclass, field, replace
from typing import Any

from redis.exceptions import RedisError

from cdp import keys
from cdp.api.tracking import write_keys
from cdp.bench import rows as measure
from cdp.bench.http import check_api, last_merge_record, merge_records, send_and_wait
from cdp.bench.loadgen import Load
from cdp.bench.micro import cleanup, raw_redis
from cdp.bench.report import report
from cdp.bench.workload import plan
from cdp.clock import wall_ms
from cdp.connect import Client, connect
from cdp.errors import BenchError
from cdp.redis_nodes import for_each_master, info_sum
from cdp.settings import Settings, format_duration

ISSUE_ROWS = ("ingest", "batch", "drain", "sustained", "freshness", "memory")
ALL_ROWS = (*ISSUE_ROWS, "mixed", "merges")
# Rows that apply events with apply_batch under bench:<run> keys: one Redis only.
ONE_REDIS_ROWS = ("memory", "mixed")


@dataclass
class Options:
    url: str = "http://127.0.0.1:8080"
    only: list[str] = field(default_factory=list)  # empty: ISSUE_ROWS
    client: str = "auto"  # auto (wrk when on PATH) | wrk | python
    processes: int = 0  # Python client processes (0: one per core)
    duration: float = 12.0  # seconds of the ingest and batch rows
    concurrency: int = 64
    calls: int = 100  # per /v1/batch request
    write_key: str = ""  # default: the first of the write-keys setting
    admin_token: str = ""  # default: the admin-token setting
    drain: int = 200_000
    worker_pids: list[int] = field(default_factory=list)
    sustain_seconds: float = 60.0
    sustain_start: float = 5_000.0  # events/s of the first step
    sustain_steps: int = 6
    fresh_rate: float = 0.0  # events/s; 0: half the sustained rate (5,000 without one)
    fresh_seconds: float = 0.0  # 0: sustain-seconds
    profiles: int = 10_000
    # the "mixed" row (the earlier cdp bench)
    events: int = 20_000
    users: int = 2_000
    merge_ratio: float = 0.0
    merges: int = 1_000  # pairs of profiles of the merges row


def check(o: Options) -> list[str]:
    rows = o.only or list(ISSUE_ROWS)
    bad = [r for r in rows if r not in ALL_ROWS]
    if bad:
        raise BenchError(f"--only: unknown row {bad[0]!r} (one of {', '.join(ALL_ROWS)})")
    if min(o.events, o.concurrency, o.users, o.calls, o.drain, o.profiles) < 1:
        raise BenchError(
            "--events, --concurrency, --users, --calls, --drain and --profiles must be at least 1"
        )
    if o.merges < 1:
        raise BenchError("--merges must be at least 1")
    if not 0 <= o.merge_ratio <= 1:
        raise BenchError("--merge-ratio must be between 0 and 1")
    if o.client == "wrk" and shutil.which("wrk") is None:
        raise BenchError("--client wrk: wrk is not on PATH (apt-get install -y wrk)")
    return [r for r in ALL_ROWS if r in rows]


async def run_bench(settings: Settings, o: Options) -> None:
    """Measure the stack at ``o.url`` and the Redis at ``settings.redis_url``; print both."""
    rows = check(o)
    run, url = uuid.uuid4().hex[:8], o.url.rstrip("/")
    write_key = o.write_key or next(iter(write_keys(settings.write_keys)), "")
    if {"batch", "sustained", "freshness"} & set(rows) and not write_key:
        raise BenchError("/v1/batch needs a write key: --write-key, or the write-keys setting")
    try:
        redis = await connect(settings, socket_connect_timeout=2, socket_timeout=30)
    except RedisError as exc:
        raise BenchError(f"cannot reach Redis at {settings.redis_url}: {exc}") from None
    python_only = o.client == "python" or shutil.which("wrk") is None
    result: dict[str, Any] = {
        "run": run, "url": url, "rows": rows,
        "window_size": format_duration(settings.window_size_ms),
        "partitions": settings.partitions, "calls": o.calls, "drain_events": o.drain,
        "sustain_seconds": o.sustain_seconds, "fresh_rate": "-",
        "client": "python processes" if python_only else "wrk (closed loop), python (paced)",
        "notes": [],
    }  # fmt: skip
    try:
        try:
            info = await info_sum(redis)
        except RedisError as exc:
            raise BenchError(f"cannot reach Redis at {settings.redis_url}: {exc}") from None
        await check_api(url)
        result["workers"] = await redis.zcount(keys.WORKERS, wall_ms(), "+inf")
        result |= {"redis": info["redis_version"], "aof": bool(info.get("aof_enabled"))}
        result["masters"] = len(await for_each_master(redis, "PING"))
        result |= await measure.bare_redis(redis, run, 20_000)
        await cleanup(redis, run)
        await _rows(redis, settings, o, run, write_key, rows, result)
    finally:
        with contextlib.suppress(RedisError):
            await cleanup(redis, run)
        await redis.aclose()
    report(result)


async def _rows(
    redis: Client,
    s: Settings,
    o: Options,
    run: str,
    write_key: str,
    rows: list[str],
    result: dict[str, Any],
) -> None:
    base = Load(
        url=o.url, kind="ingest", run=f"bench-{run}", seconds=o.duration,
        concurrency=o.concurrency, calls=o.calls, write_key=write_key,
        processes=o.processes, client=o.client,
    )  # fmt: skip
    notes = result["notes"]
    for row in rows:
        got: dict[str, Any]
        if row in ONE_REDIS_ROWS and result.get("masters", 1) > 1:
            notes.append(
                f"{row}: not measured on a cluster (it runs apply_batch on keys under"
                " bench:<run>, which span slots); see the merges row"
            )
            continue
        if row in ("drain", "sustained", "freshness", "memory", "merges"):  # a quiet stack first
            await measure.wait_drained(redis, s)
        if row == "ingest":
            got = await measure.ingest(redis, replace(base, run=f"{base.run}-i"))
        elif row == "batch":
            load = replace(base, kind="batch", run=f"{base.run}-b")
            got = await measure.batch(redis, load, s.partitions)
        elif row == "drain":
            got = await measure.drain(redis, s, run, o.drain, o.worker_pids)
        elif row == "sustained":
            load = replace(base, kind="batch", seconds=o.sustain_seconds)
            load.run, load.client = f"{base.run}-s", "python"
            got = await measure.sustained(redis, s, load, o.sustain_start, o.sustain_steps)
        elif row == "freshness":
            rate = o.fresh_rate or (result.get("sustained_eps") or 10_000) / 2
            seconds = o.fresh_seconds or o.sustain_seconds
            load = replace(base, kind="batch", seconds=seconds)
            load.run, load.client = f"{base.run}-f", "python"
            got = await measure.freshness(redis, s, load, rate, o.admin_token or s.admin_token, 2.0)
        elif row == "memory":
            got = await measure.memory_row(redis, s, run, o.profiles)
        elif row == "merges":
            got = await measure.merges(redis, s, run, o.url.rstrip("/"), o.merges, o.concurrency)
        else:
            got = await _mixed(redis, s, o, run, result)
        notes += got.pop("notes", [])
        result.update(got)


async def _mixed(
    redis: Client, s: Settings, o: Options, run: str, result: dict[str, Any]
) -> dict[str, Any]:
    """The earlier ``cdp bench``: the mixed workload end to end, then the micro-benchmarks."""
    warmup, specs = plan(run, o.events, o.users, o.merge_ratio)
    workers = result["workers"]
    out: dict[str, Any] = {"mixed_warmup_events": len(warmup), "notes": []}
    if not workers:
        out["notes"].append("mixed: no live worker (cdp:workers): end-to-end not measured")
    url = o.url.rstrip("/")
    if warmup:  # the profiles the merging ALIAS join must exist before they are sent
        done = await send_and_wait(redis, url, warmup, o.concurrency, s, workers)
        out["mixed_warmup_seconds"] = done.get("e2e_seconds")
    merges_before = await last_merge_record(redis)
    got = await send_and_wait(redis, url, specs, o.concurrency, s, workers)
    if workers:
        got |= await merge_records(redis, merges_before, run)
        if got["alias_merges"] != len(warmup) // 2:
            out["notes"].append(
                f"mixed: warning: {got['alias_merges']} merge records for"
                f" {len(warmup) // 2} merging ALIAS events"
            )
    got |= await raw_redis(redis, s, run, o.events, o.users)
    return out | {f"mixed_{k}": v for k, v in got.items()}

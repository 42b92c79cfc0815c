"""The HTTP driver of ``cdp bench``, and the end-to-end reading of the stack's counters.

``send_all`` POSTs events to ``/cdp/ingest`` with ``concurrency`` requests in flight
(accepted events/s, p50/p99 latency, answers other than 202); ``send_and_wait`` then
waits, with a live worker, until ``processed + dedup_hits + dropped`` in ``cdp:metrics``
has grown by the number accepted. ``merge_records`` counts this run's records in
``cdp:merges``.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

import aiohttp

from cdp import keys
from cdp.bench.workload import Spec, body
from cdp.clock import wall_ms
from cdp.connect import Client
from cdp.errors import BenchError
from cdp.metrics import counters
from cdp.settings import Settings
from cdp.streams import text


async def check_api(url: str) -> None:
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
            async with session.get(url + "/readyz") as r:
                status = r.status
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise BenchError(f"cannot reach the API at {url}: {exc or type(exc).__name__}") from None
    if status != 200:
        raise BenchError(f"the API at {url} is not ready: /readyz answered {status}")


async def send_all(url: str, specs: Sequence[Spec], concurrency: int) -> dict[str, Any]:
    """POST every event with ``concurrency`` requests in flight."""
    latencies: list[float] = []
    answers: Counter[str] = Counter()
    pending, last_accept = iter(specs), 0.0
    headers = {"Content-Type": "application/json"}
    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def client() -> None:
            nonlocal last_accept
            for spec in pending:  # one iterator shared by every client
                started = time.perf_counter()
                try:
                    async with session.post(url, data=body(spec, wall_ms()), headers=headers) as r:
                        await r.read()
                        answers[str(r.status)] += 1
                        last_accept = time.perf_counter() if r.status == 202 else last_accept
                except (aiohttp.ClientError, TimeoutError) as exc:
                    answers[type(exc).__name__] += 1
                latencies.append(time.perf_counter() - started)

        start = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(concurrency)))
        elapsed = time.perf_counter() - start
    cuts = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else [0.0] * 99
    accepted = answers.pop("202", 0)
    return {
        "start": start, "last_accept": last_accept, "accepted": accepted,
        "ingest_eps": round(accepted / elapsed), "ingest_seconds": round(elapsed, 2),
        "p50_ms": round(cuts[49] * 1000, 1), "p99_ms": round(cuts[98] * 1000, 1),
        "not_accepted": dict(answers),
    }  # fmt: skip


async def done_count(redis: Client, partitions: int) -> tuple[int, int]:
    """(processed + dedup_hits + dropped, late), summed over the partitions."""
    values = await counters(redis, partitions, ("processed", "dedup_hits", "dropped", "late"))
    *done, late = values.values()
    return sum(done), late


async def send_and_wait(
    redis: Client, url: str, specs: Sequence[Spec], concurrency: int, s: Settings, workers: int
) -> dict[str, Any]:
    """``send_all``, then (with a live worker) wait until every accepted event is done."""
    before, late_before = await done_count(redis, s.partitions)
    out = await send_all(url + "/cdp/ingest", specs, concurrency)
    start, last_accept = out.pop("start"), out.pop("last_accept")
    if not workers or not out["accepted"]:
        return out
    deadline = time.perf_counter() + 120 + s.window_size_ms / 1000
    while (done := (await done_count(redis, s.partitions))[0] - before) < out["accepted"]:
        if time.perf_counter() > deadline:
            print(f"cdp bench: timed out: {done} of {out['accepted']} events done")
            break
        await asyncio.sleep(0.02)
    end, late = time.perf_counter(), (await done_count(redis, s.partitions))[1] - late_before
    out.update(e2e_done=done, late=late, e2e_seconds=round(end - start, 2))
    out.update(e2e_eps=round(done / (end - start)), drain_s=round(end - last_accept, 2))
    return out


async def last_merge_record(redis: Client) -> str:
    last: Any = await redis.xrevrange(keys.MERGES, count=1)
    return text(last[0][0]) if last else "0-0"


async def merge_records(redis: Client, after: str, run: str) -> dict[str, int]:
    """This run's records in ``cdp:merges`` past ``after``: merges, refusals, and the
    merges made by the merging ALIAS events of ``plan`` (``alias_merges``)."""
    statuses: Counter[str] = Counter()
    ours, alias_merges = f"bench-{run}-", 0
    while True:
        page: Any = await redis.xrange(keys.MERGES, min=f"({after}", count=1000)
        if not page:
            break
        for entry_id, fields in page:
            event_id, status = text(fields.get(b"eventId", b"")), text(fields[b"status"])
            if event_id.startswith(ours):
                statuses[status] += 1
                alias_merges += status == "merged" and event_id.startswith(ours + "merge-")
            after = text(entry_id)
    return {
        "merges": statuses["merged"],
        "refused": statuses["refused"],
        "alias_merges": alias_merges,
    }

"""Issue 10's rows, measured on a running stack (``--url`` its API, ``CDP_REDIS_URL`` its
Redis). Each returns a dict of figures (the keys of ``report.ROWS``).

- ``ingest``: single-event ``POST /cdp/ingest`` (``loadgen``, closed loop);
- ``batch``: ``/v1/batch`` with ``calls`` calls per request; events/s is the growth of
  ``accepted`` in ``cdp:metrics`` over the run;
- ``drain``: a fresh backlog of N events published straight into the partition streams
  (the API's ``Publisher``) with ``ts`` and ``receivedAt`` = T0, a few seconds ahead, so
  the workers hold them all (up to max-buffer, the rest wait in the streams) and can
  apply none before their watermark passes T0. Timed from T0 + window-size until
  ``processed + dedup_hits + dropped`` has grown by N; Redis CPU (INFO ``used_cpu_*``),
  INFO commandstats (deltas, no reset) and the workers' CPU (``/proc/<pid>/stat``) over
  the same interval, per applied event;
- ``sustained``: paced ``/v1/batch`` at a rate stepped up until the backlog (accepted -
  processed - dedup_hits - dropped) grows; the last rate at which it stayed flat;
- ``freshness``: at a paced rate (half the sustained one), sampled IDENTIFY events with a
  trait of their own, each polled with ``GET /cdp/profiles/user:<id>/traits`` until the
  trait is there: visible time - ts;
- ``memory``: ``micro.memory`` (keys under ``bench:<run>`` on the same Redis), plus the
  encodings of the profile keys it wrote;
- ``merges`` (issue 11, not in the default set): the merge cost through the whole stack,
  one Redis or a cluster alike: Redis usec (every command, summed over the masters) per
  ALIAS that merges two small profiles, minus per ALIAS that links.

The workers' pids: ``--worker-pids``, else a scan of /proc for ``cdp worker`` command
lines whose ``CDP_REDIS_URL`` names this Redis's port (the workers set no client name,
so ``CLIENT LIST`` cannot tell them).
"""

from __future__ import annotations

import asyncio
import base64
import os
import random
import statistics
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import aiohttp
import msgspec

from cdp import keys
from cdp.api.publisher import Publisher
from cdp.bench.http import last_merge_record, merge_records, send_all
from cdp.bench.loadgen import Load, generate
from cdp.bench.micro import TRIVIAL_LUA, memory, timed
from cdp.bench.workload import small_profiles, stream_event, workload
from cdp.clock import wall_ms
from cdp.connect import Client, connect
from cdp.errors import BenchError
from cdp.events import iso_ms
from cdp.metrics import counters
from cdp.redis_nodes import info_sum, scan_all
from cdp.settings import Settings


async def metric(redis: Client, partitions: int, *names: str) -> list[int]:
    """The counters ``names``, summed over the partitions' metrics hashes."""
    return list((await counters(redis, partitions, names)).values())


async def done(redis: Client, partitions: int) -> int:
    return sum(await metric(redis, partitions, "processed", "dedup_hits", "dropped"))


async def backlog(redis: Client, partitions: int) -> int:
    """accepted - processed - dedup_hits - dropped (publish-n.lua counts in accepted too)."""
    accepted, *rest = await metric(
        redis, partitions, "accepted", "processed", "dedup_hits", "dropped"
    )
    return accepted - sum(rest)


def client_figures(prefix: str, got: dict[str, Any]) -> dict[str, Any]:
    out = {f"{prefix}_{k}": got[k] for k in ("rps", "p50_ms", "p99_ms", "requests", "not_ok")}
    out[f"{prefix}_client"] = got["client"]
    out[f"{prefix}_client_cpu"] = got["client_cpu_cores"]
    return out


async def ingest(redis: Client, load: Load) -> dict[str, Any]:
    got = await asyncio.to_thread(generate, load)
    return client_figures("ingest", got)


async def batch(redis: Client, load: Load, partitions: int) -> dict[str, Any]:
    before = (await metric(redis, partitions, "accepted"))[0]
    got = await asyncio.to_thread(generate, load)
    accepted = (await metric(redis, partitions, "accepted"))[0] - before
    out = client_figures("batch", got)
    out["batch_eps"] = round(accepted / got["seconds"]) if got["seconds"] else 0
    return out


# -- drain ---------------------------------------------------------------------------


def proc_cpu(pid: int) -> float:
    """utime + stime of a process, in seconds (fields 14 and 15 of /proc/<pid>/stat)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) "
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def find_workers(redis_url: str) -> list[int]:
    """Pids of ``cdp worker`` processes whose CDP_REDIS_URL names this Redis's port."""
    want = urlparse(redis_url)
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            if b"worker" not in argv or not any(a.endswith(b"cdp") for a in argv):
                continue
            env = dict(
                line.partition(b"=")[::2] for line in (entry / "environ").read_bytes().split(b"\0")
            )
        except OSError:
            continue
        url = urlparse(env.get(b"CDP_REDIS_URL", b"").decode())
        if url.port == (want.port or 6379) and url.hostname in (want.hostname, "localhost"):
            found.append(int(entry.name))
    return sorted(found)


async def redis_cpu(redis: Client) -> float:
    info = await info_sum(redis, "cpu")
    return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])


async def commandstats(redis: Client) -> dict[str, tuple[int, int]]:
    stats = await info_sum(redis, "commandstats")
    return {k.removeprefix("cmdstat_"): (int(v["calls"]), int(v["usec"])) for k, v in stats.items()}


async def publish(s: Settings, events: list[Any], chunk: int = 100) -> None:
    """Store ``events`` (StreamEvents) in their partitions, the API's way."""
    redis = await connect(s)
    partitions = s.partitions
    try:
        publisher = Publisher(redis, partitions)
        queue = iter(range(0, len(events), chunk))

        async def client() -> None:
            for first in queue:
                await publisher.publish_many(events[first : first + chunk])

        await asyncio.gather(*(client() for _ in range(8)))
        await publisher.close()
    finally:
        await redis.aclose()


# How long before the watermark passes T0 the drain reads the counters it starts from.
DRAIN_LEAD_S = 0.5


async def drain(
    redis: Client, s: Settings, run: str, n: int, worker_pids: Sequence[int]
) -> dict[str, Any]:
    specs = workload(run, "drain", n, max(n // 10, 10), random.Random(run))
    events = [stream_event(sp, s) for sp in specs]
    # T0: far enough ahead that the publishing (~20k events/s or more) ends before it.
    t0 = wall_ms() + 2_000 + n // 10
    events = [msgspec.structs.replace(ev, ts=t0, receivedAt=t0) for ev in events]
    pids = list(worker_pids) or find_workers(s.redis_url)
    base = await done(redis, s.partitions)  # (the caller waited for a drained stack)
    started = wall_ms()
    await publish(s, events)
    published = wall_ms()
    notes = [f"drain: {n} events published in {(published - started) / 1000:.1f} s, ts = T0"]
    if published > t0:
        notes.append("drain: warning: the publishing ended after T0: raise the lead")
    # The counters are read a little before the watermark passes T0 (the apply cannot
    # start earlier), so that reading them, slow on a loaded machine, never overlaps
    # the apply of a small drain; the clock starts when the watermark passes T0.
    await asyncio.sleep(max(0.0, (t0 + s.window_size_ms - wall_ms()) / 1000 - DRAIN_LEAD_S))
    if await done(redis, s.partitions) != base:
        notes.append("drain: warning: events were applied before T0 + window-size")
    cpu0, stats0 = await redis_cpu(redis), await commandstats(redis)
    work0 = sum(proc_cpu(p) for p in pids)
    await asyncio.sleep(max(0.0, (t0 + s.window_size_ms - wall_ms()) / 1000))
    start = time.perf_counter()
    deadline = start + 600
    while (applied := await done(redis, s.partitions) - base) < n:
        if time.perf_counter() > deadline:
            raise BenchError(f"drain: {applied} of {n} events applied after 600 s")
        await asyncio.sleep(0.01)
    end = time.perf_counter()
    cpu1, stats1 = await redis_cpu(redis), await commandstats(redis)
    work1 = sum(proc_cpu(p) for p in pids)
    out: dict[str, Any] = {
        "drain_events": n,
        "drain_eps": round(applied / (end - start)),
        "redis_us": round((cpu1 - cpu0) * 1e6 / applied, 1),
        "worker_us": round((work1 - work0) * 1e6 / applied, 1) if pids else None,
        "worker_pids": pids,
    }
    top = sorted(
        (
            (k, c - stats0.get(k, (0, 0))[0], u - stats0.get(k, (0, 0))[1])
            for k, (c, u) in stats1.items()
        ),
        key=lambda row: -row[2],
    )[:6]
    out["drain_commands"] = {
        name: {"calls_per_event": round(c / applied, 3), "us_per_event": round(u / applied, 2)}
        for name, c, u in top
    }
    how = "--worker-pids" if worker_pids else "a /proc scan for `cdp worker` on this Redis's port"
    notes.append(f"drain: worker pids {pids or 'none found'} (from {how})")
    out["notes"] = notes
    return out


# -- sustained and freshness -------------------------------------------------------------


def growth(points: Sequence[tuple[float, int]], span: float) -> tuple[float, int, int]:
    """Backlog growth per second: the lowest backlog of the last ``span`` seconds minus
    that of the first ``span`` seconds, over the time between them. Lowest, because the
    workers add their counts once a tick: the backlog is a saw with a tick's period."""
    if len(points) < 2:
        return 0.0, 0, 0
    t0, t1 = points[0][0], points[-1][0]
    span = min(span, (t1 - t0) / 3)
    first = min(b for t, b in points if t <= t0 + span)
    last = min(b for t, b in points if t >= t1 - span)
    return (last - first) / max(t1 - t0 - span, 1e-3), first, last


async def paced(
    redis: Client, partitions: int, load: Load, settle_s: float, span: float
) -> dict[str, Any]:
    """Run ``load`` (paced) while sampling the backlog; its growth after ``settle_s``
    (the window fills up first) and the accepted rate."""
    points: list[tuple[float, int]] = []
    accepted0 = (await metric(redis, partitions, "accepted"))[0]
    task = asyncio.create_task(asyncio.to_thread(generate, load))
    start = time.perf_counter()
    while not task.done():
        now = time.perf_counter() - start
        if now >= settle_s:
            points.append((now, await backlog(redis, partitions)))
        await asyncio.sleep(0.05)
    got = await task
    accepted = (await metric(redis, partitions, "accepted"))[0] - accepted0
    # accepted per second of the schedule (the last requests may end after it)
    rate, first, last = growth(points, span)
    return {"growth": rate, "lows": (first, last), "eps": accepted / load.seconds, "got": got}


async def wait_drained(redis: Client, s: Settings, timeout: float = 300) -> None:
    """Until every event accepted is done, then one more tick
    (the workers flush their counts each tick)."""
    deadline = time.perf_counter() + timeout
    stuck = (s.window_size_ms + 3 * s.ticker_interval_ms) / 1000 + 2
    last, since = await done(redis, s.partitions), time.perf_counter()
    while (left := await backlog(redis, s.partitions)) > 0:
        if time.perf_counter() > deadline:
            raise BenchError(f"the stack did not drain its backlog in {timeout:.0f} s")
        if (now := await done(redis, s.partitions)) != last:
            last, since = now, time.perf_counter()
        elif time.perf_counter() - since > stuck:  # e.g. dead letters: never done
            print(f"cdp bench: warning: a backlog of {left} events is not moving: going on")
            break
        await asyncio.sleep(0.1)
    await asyncio.sleep(s.ticker_interval_ms / 1000)


async def sustained(
    redis: Client, s: Settings, base: Load, start_eps: float, steps: int
) -> dict[str, Any]:
    """Step the offered rate up by 1.5x from ``start_eps`` (down by 1.5x when that rate
    already grows) until the backlog grows (by
    more than 5% of the rate per second over ``base.seconds``, after the window has
    filled up: window-size + 2 ticks + 1 s more) or less than 95% is accepted."""
    settle = (s.window_size_ms + 2 * s.ticker_interval_ms) / 1000 + 1
    span = max(2 * s.ticker_interval_ms / 1000, base.seconds / 10)
    tried: list[str] = []
    flat, rate, down = 0.0, start_eps, False
    for _ in range(steps):
        await wait_drained(redis, s)
        load = replace(base, rate=rate / base.calls, run=f"{base.run}-{len(tried)}")
        load.seconds = settle + base.seconds
        got = await paced(redis, s.partitions, load, settle, span)
        ok = got["growth"] <= 0.05 * rate and got["eps"] >= 0.95 * rate
        tried.append(
            f"{rate:,.0f}/s: accepted {got['eps']:,.0f}/s, backlog {got['growth']:+,.0f}/s"
            f" (lows {got['lows'][0]:,} -> {got['lows'][1]:,})"
            f" ({'flat' if ok else 'grows'}; client {got['got']['client_cpu_cores']} cores)"
        )
        if ok:
            flat, rate = rate, rate * 1.5
            if down:  # the first flat rate on the way down
                break
        elif flat:  # the first rate that grows on the way up
            break
        else:  # the first step already grows: step down
            down, rate = True, rate / 1.5
    await wait_drained(redis, s)
    return {"sustained_eps": round(flat), "notes": ["sustained: " + "; ".join(tried)]}


async def freshness(
    redis: Client, s: Settings, base: Load, rate_eps: float, admin_token: str, samples_per_s: float
) -> dict[str, Any]:
    """Paced load at ``rate_eps`` plus sampled IDENTIFYs: ts -> visible in the profile."""
    load = replace(base, rate=rate_eps / base.calls, run=base.run + "-f")
    task = asyncio.create_task(asyncio.to_thread(generate, load))
    auth = {"Authorization": "Basic " + base64.b64encode(f"{base.write_key}:".encode()).decode()}
    admin = {"Authorization": f"Bearer {admin_token}"} if admin_token else {}
    lags: list[asyncio.Task[float]] = []
    url = base.url.rstrip("/")
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        k = 0  # sampling stops a window (and a second) before the load does
        end = time.perf_counter() + base.seconds - s.window_size_ms / 1000 - 1
        while True:
            uid, ts = f"{base.run}-fresh{k}", wall_ms()
            call: dict[str, Any] = {"type": "identify", "userId": uid, "timestamp": iso_ms(ts)}
            call |= {"messageId": f"{uid}-i", "traits": {"fresh": k}}
            async with session.post(url + "/v1/batch", json={"batch": [call]}, headers=auth) as r:
                if r.status != 200:
                    raise BenchError(f"freshness: /v1/batch answered {r.status}")
            profile = f"{url}/cdp/profiles/user:{uid}/traits"
            lags.append(asyncio.create_task(_visible(session, profile, admin, ts)))
            k += 1
            await asyncio.sleep(1 / samples_per_s)
            if time.perf_counter() >= end:
                break
        got = sorted(await asyncio.gather(*lags))
    await task
    cuts = statistics.quantiles(got, n=100, method="inclusive") if len(got) > 1 else got * 99
    return {
        "fresh_rate": round(rate_eps),
        "fresh_samples": len(got),
        "fresh_p50_s": round(cuts[49], 3),
        "fresh_p99_s": round(cuts[98], 3),
        "fresh_max_s": round(got[-1], 3),
    }


async def _visible(
    session: aiohttp.ClientSession, url: str, headers: dict[str, str], ts: int
) -> float:
    while True:
        async with session.get(url, headers=headers) as r:
            if r.status == 200 and "fresh" in (await r.json()).get("traits", {}):
                return (wall_ms() - ts) / 1000
            if r.status in (401, 403):
                raise BenchError(
                    f"freshness: GET {url} answered {r.status}: the stack needs an admin"
                    " token (CDP_ADMIN_TOKEN), and cdp bench the same (--admin-token)"
                )
        if wall_ms() - ts > 120_000:
            raise BenchError(f"freshness: {url} not visible 120 s after its ts")
        await asyncio.sleep(0.01)


# -- memory and bare Redis -----------------------------------------------------------------


async def bare_redis(redis: Client, run: str, n: int) -> dict[str, Any]:
    """XADD and EVALSHA of a trivial 5-command script, pipelined by 100."""
    sample = b"x" * 200
    prefix = f"bench:{run}"
    xadd_eps, _ = await timed(n, lambda p, i: p.xadd(f"{prefix}:x", {"e": sample}), redis, 100)
    trivial = redis.register_script(TRIVIAL_LUA)
    lua_keys = [f"{prefix}:lua:{k}" for k in "hzs"]
    evalsha, _ = await timed(n, lambda p, i: trivial(lua_keys, [i % 100], p), redis, 100)
    return {"xadd_eps": round(xadd_eps), "evalsha_cps": round(evalsha)}


async def memory_row(redis: Client, s: Settings, run: str, profiles: int) -> dict[str, Any]:
    prefix = f"bench:{run}"
    got = await memory(redis, s, prefix, run, profiles * 3)
    encodings: dict[str, int] = {}
    async for key in scan_all(redis, f"{prefix}:profile:*"):
        parts = key.decode().split(":")  # bench:<run>:profile:{cid}[:traits...]
        family = parts[4] if len(parts) > 4 else "profile"
        enc = await redis.object("encoding", key)
        name = f"{family}:{enc.decode() if isinstance(enc, bytes) else enc}"
        encodings[name] = encodings.get(name, 0) + 1
    traits = {k.split(":", 1)[1]: v for k, v in encodings.items() if k.startswith("traits:")}
    return {
        "profile_bytes": round(got["profile_bytes"]),
        "keys_per_profile": round(got["keys_per_profile"], 2),
        "eventid_bytes": round(got["eventid_bytes"]),
        "traits_encoding": ",".join(sorted(traits)) or "-",
        "profile_key_encodings": encodings,
    }


# -- merges: the end-to-end merge cost, one Redis or a cluster ---------------------------


async def _redis_usec(redis: Client) -> tuple[float, int, int, float]:
    """(now, usec of the scripts, commands, Redis CPU seconds) summed over the masters.
    INFO commandstats counts a command a script calls in its own row as well as in the
    script's: the scripts' usec (EVALSHA, EVAL) hold their commands' time, and the
    command count holds those the scripts ran."""
    stats = await commandstats(redis)
    usec = sum(u for name, (_, u) in stats.items() if name in ("evalsha", "eval"))
    calls = sum(c for c, _ in stats.values())
    return time.perf_counter(), usec, calls, await redis_cpu(redis)


async def _applied(redis: Client, s: Settings, done0: int, n: int) -> int:
    """Wait (polling 4 times a second: the polls count in commandstats) until ``n``
    more events are done; how many were."""
    deadline = time.perf_counter() + 120 + s.window_size_ms / 1000
    while (now := await done(redis, s.partitions) - done0) < n:
        if time.perf_counter() > deadline:
            break
        await asyncio.sleep(0.25)
    await asyncio.sleep(2 * s.ticker_interval_ms / 1000)  # the counts are flushed per tick
    return now


async def merges(
    redis: Client, s: Settings, run: str, url: str, n: int, concurrency: int
) -> dict[str, Any]:
    """Redis time per merge through the whole stack (API, workers, whatever protocol
    they apply with): ``micro.small_profiles``' n pairs of small profiles are sent
    and applied first; then n ALIAS that each merge a pair, then n that each link a new
    anonymousId to a survivor, each phase sent and waited for until applied. Per ALIAS:
    the Redis CPU (the whole cost: scripts, plain commands, network), the scripts'
    usec and the commands run (INFO commandstats; on a cluster a merge is several
    scripts and plain commands on several nodes, not one script), all summed over the
    masters, less what the idle stack (workers' polling, this row's own polls) costs
    over as long, measured first. ``merge_e2e_*`` is merging minus linking (the ingest,
    the read, the ack and the segment evaluation cancel out). Needs live workers."""
    setup, merging, linking = small_profiles(run, n, s.counter_bucket_ms)
    workers = await redis.zcount(keys.WORKERS, wall_ms(), "+inf")
    if not workers:
        return {"notes": ["merges: no live worker: not measured"]}
    notes: list[str] = []
    await send_all(url + "/cdp/ingest", setup, concurrency)
    await wait_drained(redis, s)
    idle0 = await _redis_usec(redis)
    await asyncio.sleep(s.window_size_ms / 1000)
    idle1 = await _redis_usec(redis)
    idle = [(b - a) / (idle1[0] - idle0[0]) for a, b in zip(idle0[1:], idle1[1:], strict=True)]
    out: dict[str, Any] = {"merges_pairs": n}
    before = await last_merge_record(redis)
    for kind, specs in (("merge", merging), ("link", linking)):
        done0, stats0 = await done(redis, s.partitions), await commandstats(redis)
        t0, usec0, calls0, cpu0 = await _redis_usec(redis)
        got = await send_all(url + "/cdp/ingest", specs, concurrency)
        applied = await _applied(redis, s, done0, got["accepted"])
        t1, usec1, calls1, cpu1 = await _redis_usec(redis)
        stats1 = await commandstats(redis)
        top = sorted(
            ((k, c - stats0.get(k, (0, 0))[0], u - stats0.get(k, (0, 0))[1])
             for k, (c, u) in stats1.items()),
            key=lambda row: -row[2],
        )[:8]  # fmt: skip
        out[f"{kind}_e2e_commands"] = {k: [round(c / n, 2), round(u / n, 1)] for k, c, u in top}
        if applied < n:
            notes.append(f"merges: {kind}: {applied} of {n} applied")
        spent = t1 - t0
        out[f"{kind}_e2e_script_us"] = round((usec1 - usec0 - idle[0] * spent) / n, 1)
        out[f"{kind}_e2e_calls"] = round((calls1 - calls0 - idle[1] * spent) / n, 1)
        out[f"{kind}_e2e_cpu_us"] = round((cpu1 - cpu0 - idle[2] * spent) * 1e6 / n, 1)
    records = await merge_records(redis, before, run)
    if records["merges"] != n:
        notes.append(f"merges: warning: {records['merges']} merge records for {n} merging ALIAS")
    out["merge_e2e_script_us"] = round(out["merge_e2e_script_us"] - out["link_e2e_script_us"], 1)
    out["merge_e2e_cpu_us"] = round(out["merge_e2e_cpu_us"] - out["link_e2e_cpu_us"], 1)
    notes.append(
        f"merges: the idle stack costs {idle[0]:,.0f} usec of scripts, {idle[1]:,.0f} commands and"
        f" {idle[2] * 1e6:,.0f} us of Redis CPU per second (deducted)"
    )
    out["notes"] = notes
    return out

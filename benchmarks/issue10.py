"""The measurements of issue 10's table, on this machine: a harness, no optimisation.

    python benchmarks/issue10.py [--quick] [--only N ...] [--duration 12]
                                 [--drain-events 200000] [--profiles 10000]

Each part starts a stack of its own (``cdp.chaos.cluster.Cluster``: the embedded
redis-server with AOF everysec on a free port in a temp dir, one ``cdp api`` (serving
with ``api-processes`` processes: one per core unless ``--api-processes N``; its event
loop ``--event-loop``, default uvloop when installed), 2 ``cdp worker`` processes,
default settings) and stops it afterwards:

1. single-event ``POST /cdp/ingest``: wrk -t2 -c64 --latency, a Lua script making
   unique eventIds (run id + thread id + counter), TRACK of one of 10k users.
2. ``POST /v1/batch`` with 100 track calls per request (wrk -t2 -c64, workers running):
   req/s, events/s (growth of ``accepted`` in ``cdp:metrics`` / duration), p99.
3. drain: the workers are stopped, ``--drain-events`` events of ``cdp bench``'s mixed
   workload (70% TRACK, 20% IDENTIFY, 10% ALIAS; users = events / 10) are published
   straight into the partition streams by the API's own publisher
   (``lua/publish-n.lua``); window-size + one tick later (so every event is due when
   read) 2 workers are started and timed until ``processed + dedup_hits + dropped`` in
   ``cdp:metrics`` has grown by that many. The rate is taken from the first read (a
   group's cursor moves) to the last apply counted (the metrics are flushed each
   tick), so worker start-up and lease take-over are left out; the Redis CPU (INFO
   ``used_cpu_sys + used_cpu_user``), its top commands (INFO commandstats, reset at the
   same moment; commands a script calls are counted in their own row *and* in
   evalsha's time, which is wall time, so on a loaded machine it can exceed the CPU
   figure) and the workers' CPU (``/proc/<pid>/stat`` utime+stime) are deltas over
   the same interval, divided by the events applied.
4. memory: ``--profiles`` users each get an IDENTIFY (userId, email, 3 traits) and 2
   TRACKs; once applied the workers are stopped, the partition streams deleted
   (``used_memory`` before/after), then the dedup hashes (their ``used_memory`` drop
   divided by the eventIds they held: bytes per remembered eventId); what is left
   above the empty stack's ``used_memory`` (read with the workers stopped too) divided
   by the users is bytes per profile.
   Keys per profile counts ``cdp:profile:*`` and ``cdp:identifier:*``; ``MEMORY USAGE``
   of a sample of profiles' keys is shown beside it. ``used_memory`` is read only while
   no AOF rewrite runs (Redis 6 counts the rewrite buffers in it).

wrk (Debian: ``apt-get install -y wrk``) is required: without it the script says so
and exits with status 2. The last part of the output is the table, with the command
line, the date, the load average and the issue's "today" column beside each row.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import datetime
import os
import platform
import random
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import redis as redis_sync
from redis.asyncio import Redis

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `python benchmarks/issue10.py` from a checkout
    sys.path.insert(0, str(ROOT))

from cdp import keys  # noqa: E402
from cdp.api.publisher import Publisher  # noqa: E402
from cdp.bench.workload import NAMES, Spec, stream_event, workload  # noqa: E402
from cdp.chaos.cluster import Cluster  # noqa: E402
from cdp.settings import Settings, parse_duration_ms  # noqa: E402

WRITE_KEY = "benchkey"
STACK_ENV = {"CDP_WRITE_KEYS": f"{WRITE_KEY}=bench", "CDP_LOG_LEVEL": "warning"}
WORKERS = 2
PARTITIONS = Settings().partitions  # the stack runs with the defaults

# row key -> (figure, the "today")
ROWS: dict[str, tuple[str, str]] = {
    "ingest_rps": ("1. POST /cdp/ingest, req/s", "4.8k"),
    "ingest_p50": ("1. POST /cdp/ingest, p50 ms", "-"),
    "ingest_p99": ("1. POST /cdp/ingest, p99 ms", "45"),
    "batch_rps": ("2. /v1/batch x100, req/s", "139"),
    "batch_eps": ("2. /v1/batch x100, events/s accepted", "13.9k"),
    "batch_p99": ("2. /v1/batch x100, p99 ms", "281"),
    "drain_eps": ("3. drain, 2 workers, events/s (first read -> all applied)", "15.4k"),
    "drain_wall_eps": ("3. drain, events/s incl. worker start", "-"),
    "redis_us": ("3. Redis CPU per applied event, us", "~40"),
    "worker_us": ("3. worker CPU per applied event, us (both workers)", "~23"),
    "profile_bytes": ("4. Redis memory per profile, B", "3.0 KB"),
    "profile_keys": ("4. keys per profile", "11"),
    "profile_sample_bytes": ("4. MEMORY USAGE of a profile's keys (sample), B", "-"),
    "traits_bytes": ("4. MEMORY USAGE of the traits hash (sample), B", "832"),
    "eventid_bytes": ("4. Redis memory per remembered eventId, B", "~102"),
}
PART_ROWS = {
    1: ["ingest_rps", "ingest_p50", "ingest_p99"],
    2: ["batch_rps", "batch_eps", "batch_p99"],
    3: ["drain_eps", "drain_wall_eps", "redis_us", "worker_us"],
    4: ["profile_bytes", "profile_keys", "profile_sample_bytes", "traits_bytes", "eventid_bytes"],
}

WRK_LUA = r"""
-- Unique eventIds: run id + thread id + counter. args: run, kind (ingest|batch),
-- users, calls per batch, Authorization header (batch).
local counter, run, kind, users, per = 0, "r", "ingest", 10000, 100
local last, ts = -1, ""
local threads = 0
setup = function(thread) threads = threads + 1; thread:set("tid", threads) end
init = function(args)
  run, kind = args[1], args[2]
  users, per = tonumber(args[3]), tonumber(args[4])
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
  if args[5] and args[5] ~= "" then wrk.headers["Authorization"] = args[5] end
end
local function now()
  local t = os.time()
  if t ~= last then last = t; ts = os.date("!%Y-%m-%dT%H:%M:%SZ", t) end
  return ts
end
request = function()
  local t = now()
  if kind == "ingest" then
    counter = counter + 1
    local body = string.format(
      '{"eventId":"%s-%d-%d","ts":"%s","payload":{"type":"TRACK","userId":"%s-u%d",'
        .. '"name":"Page Viewed"}}',
      run, tid, counter, t, run, counter % users)
    return wrk.format(nil, nil, nil, body)
  end
  local calls = {}
  for i = 1, per do
    counter = counter + 1
    calls[i] = string.format(
      '{"type":"track","messageId":"%s-%d-%d","timestamp":"%s","userId":"%s-u%d",'
        .. '"event":"Page Viewed"}',
      run, tid, counter, t, run, counter % users)
  end
  return wrk.format(nil, nil, nil, '{"batch":[' .. table.concat(calls, ",") .. ']}')
end
"""


class Harness:
    def __init__(self, args: argparse.Namespace, tmp: Path) -> None:
        self.args = args
        self.tmp = tmp
        self.results: dict[str, float] = {}
        self.notes: list[str] = []
        self.run = f"b{random.randrange(16**6):06x}"
        self.window_ms = (
            parse_duration_ms(args.window_size) if args.window_size else Settings().window_size_ms
        )
        self._stacks = 0

    # -- the stack -------------------------------------------------------------------

    @contextmanager
    def stack(self) -> Iterator[Cluster]:
        self._stacks += 1
        env = dict(STACK_ENV)
        if self.args.window_size:
            env["CDP_WINDOW_SIZE"] = self.args.window_size
        if self.args.api_processes is not None:
            env["CDP_API_PROCESSES"] = str(self.args.api_processes)
        if self.args.event_loop:
            env["CDP_EVENT_LOOP"] = self.args.event_loop
        cluster = Cluster(self.tmp / f"stack{self._stacks}", WORKERS, "everysec", env)
        try:
            cluster.start()
            yield cluster
        finally:
            cluster.stop()

    @staticmethod
    def client(cluster: Cluster) -> redis_sync.Redis:
        return redis_sync.Redis(port=cluster.redis.port, decode_responses=True)

    @staticmethod
    def stop_workers(cluster: Cluster) -> None:
        for name in cluster.worker_names:
            proc = cluster.processes.get(name)
            if proc is not None and proc.poll() is None:
                proc.terminate()
                proc.wait(timeout=30)

    @staticmethod
    def wait_until(check: Callable[[], Any], timeout: float, what: str) -> Any:
        deadline = time.monotonic() + timeout
        while not (value := check()):
            if time.monotonic() > deadline:
                raise SystemExit(f"issue10: timed out after {timeout:.0f} s waiting for {what}")
            time.sleep(0.05)
        return value

    def wait_groups(self, r: redis_sync.Redis) -> None:
        """Every partition stream has the workers' consumer group (made at their start)."""

        def ready() -> bool:
            for p in range(PARTITIONS):
                try:
                    if not any(g["name"] == keys.GROUP for g in r.xinfo_groups(keys.stream(p))):
                        return False
                except redis_sync.ResponseError:
                    return False
            return True

        self.wait_until(ready, 60, "the workers' consumer groups")

    @staticmethod
    def metrics(r: redis_sync.Redis, *names: str) -> list[int]:
        return [int(v or 0) for v in r.hmget(keys.METRICS, list(names))]

    def done(self, r: redis_sync.Redis) -> int:
        return sum(self.metrics(r, "processed", "dedup_hits", "dropped"))

    # -- wrk -------------------------------------------------------------------------

    def wrk(self, url: str, kind: str, auth: str = "") -> dict[str, float]:
        script = self.tmp / "issue10.lua"
        script.write_text(WRK_LUA)
        cmd = ["wrk", "-t2", "-c64", f"-d{self.args.duration}s", "--latency", "-s", str(script)]
        cmd += [url, "--", f"{self.run}-{kind}", kind, str(10_000), str(self.args.batch_calls)]
        cmd += [auth]
        shown = cmd[:-1] + (["Basic <write key>"] if auth else [""])
        print("$", shlex.join(shown), flush=True)
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=self.args.duration + 60)
        if out.returncode != 0:
            raise SystemExit(f"issue10: wrk failed ({out.returncode}): {out.stderr}{out.stdout}")
        print(out.stdout, flush=True)
        return parse_wrk(out.stdout)

    # -- part 1 ----------------------------------------------------------------------

    def part1(self) -> None:
        with self.stack() as cluster:
            r = self.client(cluster)
            before = self.metrics(r, "accepted")[0]
            got = self.wrk(cluster.api_url + "/cdp/ingest", "ingest")
            accepted = self.metrics(r, "accepted")[0] - before
            self.check_answers("ingest", got, accepted, per_request=1)
            self.results["ingest_rps"] = got["rps"]
            self.results["ingest_p50"] = got["p50"]
            self.results["ingest_p99"] = got["p99"]

    # -- part 2 ----------------------------------------------------------------------

    def part2(self) -> None:
        auth = "Basic " + base64.b64encode(f"{WRITE_KEY}:".encode()).decode()
        with self.stack() as cluster:
            r = self.client(cluster)
            before = self.metrics(r, "accepted")[0]
            got = self.wrk(cluster.api_url + "/v1/batch", "batch", auth)
            accepted = self.metrics(r, "accepted")[0] - before
            self.check_answers("batch", got, accepted, per_request=self.args.batch_calls)
            self.results["batch_rps"] = got["rps"]
            self.results["batch_eps"] = accepted / got["seconds"]
            self.results["batch_p99"] = got["p99"]

    def check_answers(
        self, what: str, got: dict[str, float], accepted: int, per_request: int
    ) -> None:
        if got["non2xx"]:
            self.notes.append(f"{what}: {got['non2xx']:.0f} answers were not 2xx")
        # wrk counts completed requests; requests cut at the end may still be stored.
        expected = got["requests"] * per_request
        if accepted < expected:
            self.notes.append(
                f"{what}: {accepted} events accepted in cdp:metrics for {expected:.0f} sent"
            )

    # -- part 3 ----------------------------------------------------------------------

    async def publish(self, r_url: str, events: list[Any], chunk: int = 100) -> None:
        """Store ``events`` (StreamEvents) in their partitions, the API's way."""
        redis = Redis.from_url(r_url)
        try:
            publisher = Publisher(redis, PARTITIONS)
            queue = iter(range(0, len(events), chunk))

            async def client() -> None:
                for first in queue:
                    await publisher.publish_many(events[first : first + chunk])

            await asyncio.gather(*(client() for _ in range(8)))
            await publisher.close()
        finally:
            await redis.aclose()

    def part3(self) -> None:
        n = self.args.drain_events
        settings = Settings()
        rng = random.Random(self.run)
        specs = workload(self.run, "drain", n, max(n // 10, 10), rng)
        with self.stack() as cluster:
            r = self.client(cluster)
            self.wait_groups(r)
            self.stop_workers(cluster)
            t0 = time.perf_counter()
            asyncio.run(self.publish(cluster.redis.url, [stream_event(s, settings) for s in specs]))
            print(f"drain: {n} events published in {time.perf_counter() - t0:.1f} s", flush=True)
            # A backlog is events already due: wait until the newest one is past the
            # window (plus a tick), so the workers apply them as soon as they read them.
            time.sleep((self.window_ms + settings.ticker_interval_ms) / 1000)
            backlog = sum(r.xlen(keys.stream(p)) for p in range(PARTITIONS))
            base = self.done(r)
            aof0 = aof_rewrites(cluster)
            started = time.perf_counter()
            workers = [cluster.spawn(name) for name in cluster.worker_names]
            self.wait_until(lambda: reading(r), 120, "the workers to read the backlog")
            t_first = time.perf_counter()
            cpu0, proc0 = redis_cpu(r), sum(proc_cpu(w.pid) for w in workers)
            r.config_resetstat()
            self.wait_until(lambda: self.done(r) - base >= n, 600, f"{n} events applied")
            t_end = time.perf_counter()
            cpu1, proc1 = redis_cpu(r), sum(proc_cpu(w.pid) for w in workers)
            stats = r.info("commandstats")
            aof1 = aof_rewrites(cluster)
        applied = n
        self.results["drain_eps"] = applied / (t_end - t_first)
        self.results["drain_wall_eps"] = n / (t_end - started)
        self.results["redis_us"] = (cpu1 - cpu0) * 1e6 / applied
        self.results["worker_us"] = (proc1 - proc0) * 1e6 / applied
        self.notes.append(
            f"drain: backlog {backlog} entries; {applied} applied from the first read in "
            f"{t_end - t_first:.1f} s ({t_end - started:.1f} s from the workers' start); "
            f"{aof1 - aof0} AOF rewrites during it"
        )
        top = sorted(stats.items(), key=lambda kv: -int(kv[1]["usec"]))[:6]
        lines = ["drain, INFO commandstats top commands (per applied event):"]
        for name, s in top:
            calls, usec = int(s["calls"]) / applied, int(s["usec"]) / applied
            lines.append(
                f"  {name.removeprefix('cmdstat_'):<12} calls/event {calls:7.3f}"
                f"  us/event {usec:7.2f}  us/call {float(s['usec_per_call']):8.2f}"
            )
        self.notes.append("\n".join(lines))

    # -- part 4 ----------------------------------------------------------------------

    def part4(self) -> None:
        n = self.args.profiles
        settings = Settings()
        specs: list[Spec] = []
        for k in range(n):
            uid = f"{self.run}-p{k}"
            traits = {"plan": random.choice(("free", "pro")), "visits": k % 97, "country": "FR"}
            identify = {"type": "IDENTIFY", "userId": uid, "email": f"{uid}@example.com"}
            specs.append((f"{uid}-i", {**identify, "traits": traits}, 3000))
            for t in range(2):
                track = {"type": "TRACK", "userId": uid, "name": NAMES[t]}
                specs.append((f"{uid}-t{t}", track, 2000 - t * 1000))
        with self.stack() as cluster:
            r = self.client(cluster)
            self.wait_groups(r)
            # The baseline with the workers stopped, as the reading after: their
            # connections' buffers (tens of KB) are not a profile's.
            self.stop_workers(cluster)
            quiet(r)
            base_mem, base_keys = used_memory(r), count_profile_keys(r)
            base = self.done(r)
            for name in cluster.worker_names:
                cluster.spawn(name)
            asyncio.run(self.publish(cluster.redis.url, [stream_event(s, settings) for s in specs]))
            self.wait_until(
                lambda: self.done(r) - base >= len(specs), 300, f"{len(specs)} events applied"
            )
            self.stop_workers(cluster)
            quiet(r)
            with_streams = used_memory(r)
            r.delete(*[keys.stream(p) for p in range(PARTITIONS)])
            quiet(r)
            no_streams = used_memory(r)
            dedup = list(r.scan_iter(match=keys.DEDUP_PATTERN, count=1000))
            ids = sum(r.hlen(k) for k in dedup)
            if dedup:
                r.delete(*dedup)
            quiet(r)
            no_dedup = used_memory(r)
            profile_keys = count_profile_keys(r) - base_keys
            sample, traits_sample, encodings = sample_profiles(r, 200)
        self.results["profile_bytes"] = (no_dedup - base_mem) / n
        self.results["profile_keys"] = profile_keys / n
        self.results["profile_sample_bytes"] = sample
        self.results["traits_bytes"] = traits_sample
        self.results["eventid_bytes"] = (no_streams - no_dedup) / max(ids, 1)
        self.notes.append(
            f"memory: {n} profiles from {len(specs)} events; streams held "
            f"{with_streams - no_streams} B; {ids} eventIds in {len(dedup)} dedup hashes; "
            f"traits hash encodings in the sample: {encodings}"
        )


# -- readings ------------------------------------------------------------------------


def parse_wrk(text: str) -> dict[str, float]:
    def ms(value: str, unit: str) -> float:
        return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}[unit]

    out: dict[str, float] = {"non2xx": 0.0}
    for pct, key in (("50", "p50"), ("99", "p99")):
        m = re.search(rf"^\s*{pct}(?:\.000)?%\s+([\d.]+)(us|ms|s|m)\s*$", text, re.M)
        if not m:
            raise SystemExit(f"issue10: no {pct}% latency in wrk's output:\n{text}")
        out[key] = ms(m.group(1), m.group(2))
    m = re.search(r"^\s*(\d+) requests in ([\d.]+)(us|ms|s|m)", text, re.M)
    rps = re.search(r"^Requests/sec:\s+([\d.]+)", text, re.M)
    if not m or not rps:
        raise SystemExit(f"issue10: no request count in wrk's output:\n{text}")
    out["requests"] = float(m.group(1))
    out["seconds"] = ms(m.group(2), m.group(3)) / 1000
    out["rps"] = float(rps.group(1))
    non = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
    if non:
        out["non2xx"] = float(non.group(1))
    return out


def reading(r: redis_sync.Redis) -> bool:
    """Has a worker read from any partition stream yet (the group's cursor moved)?"""
    for p in range(PARTITIONS):
        for g in r.xinfo_groups(keys.stream(p)):
            if g["name"] == keys.GROUP and (g["pending"] or g["last-delivered-id"] != "0-0"):
                return True
    return False


def aof_rewrites(cluster: Cluster) -> int:
    """AOF rewrites started so far, from redis.log (Redis 6.2's INFO has no counter)."""
    log = cluster.redis_log()
    text = log.read_text(errors="replace") if log.exists() else ""
    return text.count("Background append only file rewriting started")


def redis_cpu(r: redis_sync.Redis) -> float:
    info = r.info("cpu")
    return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])


def proc_cpu(pid: int) -> float:
    """utime + stime of a process, in seconds (fields 14 and 15 of /proc/<pid>/stat)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) "
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def quiet(r: redis_sync.Redis, timeout: float = 120) -> None:
    """Wait until no AOF rewrite runs: during one, used_memory counts its buffers."""
    deadline = time.monotonic() + timeout
    while True:
        info = r.info("persistence")
        if not int(info["aof_rewrite_in_progress"]) and not int(
            info.get("aof_rewrite_scheduled", 0)
        ):
            return
        if time.monotonic() > deadline:
            raise SystemExit("issue10: an AOF rewrite did not end")
        time.sleep(0.1)


def used_memory(r: redis_sync.Redis) -> int:
    return int(r.info("memory")["used_memory"])


def count_profile_keys(r: redis_sync.Redis) -> int:
    return sum(
        sum(1 for _ in r.scan_iter(match=pattern, count=1000))
        for pattern in (keys.PROFILE_PREFIX + "*", keys.IDENTIFIER_PREFIX + "*")
    )


def sample_profiles(r: redis_sync.Redis, k: int) -> tuple[float, float, str]:
    """(MEMORY USAGE of a profile's keys, of its traits hash, traits encodings): means."""
    cids = [str(c) for c in r.zrange(keys.PROFILES, 0, k - 1)]
    if not cids:
        raise SystemExit("issue10: no profile in cdp:profiles")
    total = traits_total = 0
    encodings: dict[str, int] = {}
    for cid in cids:
        names = [keys.profile(cid), keys.traits(cid), keys.identifiers(cid), keys.merged(cid)]
        names += [keys.counters(cid), keys.profile_segments(cid)]
        names += [keys.counter(cid, name) for name in map(str, r.hkeys(keys.counters(cid)))]
        names += [keys.identifier(i) for i in map(str, r.smembers(keys.identifiers(cid)))]
        for name in names:
            total += int(r.memory_usage(name, samples=0) or 0)
        traits_total += int(r.memory_usage(keys.traits(cid), samples=0) or 0)
        enc = str(r.object("encoding", keys.traits(cid)))
        encodings[enc] = encodings.get(enc, 0) + 1
    return total / len(cids), traits_total / len(cids), str(encodings)


# -- the table -----------------------------------------------------------------------


def fmt(key: str, value: float) -> str:
    if key.endswith(("_p50", "_p99")) or key.endswith("_us"):
        return f"{value:.1f}"
    if key == "profile_keys":
        return f"{value:.2f}"
    return f"{value:,.0f}"


def table(results: dict[str, float], parts: list[int]) -> str:
    lines = ['| figure | this run | issue 10 "today" |', "|---|---|---|"]
    for part in parts:
        for key in PART_ROWS[part]:
            figure, today = ROWS[key]
            value = fmt(key, results[key]) if key in results else "MISSING"
            lines.append(f"| {figure} | {value} | {today} |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--quick", action="store_true", help="small sizes, for a smoke test")
    p.add_argument(
        "--only",
        type=int,
        action="append",
        choices=[1, 2, 3, 4],
        default=None,
        help="run only this part (repeatable)",
    )
    p.add_argument("--duration", type=int, default=None, help="seconds per wrk run (12)")
    p.add_argument("--drain-events", type=int, default=None, help="drain backlog (200000)")
    p.add_argument("--profiles", type=int, default=None, help="users of part 4 (10000)")
    p.add_argument(
        "--window-size",
        default=None,
        help="CDP_WINDOW_SIZE of the stack (default: the setting's, 5s; --quick: 1s)",
    )
    p.add_argument("--batch-calls", type=int, default=100, help="calls per /v1/batch request")
    p.add_argument(
        "--api-processes",
        type=int,
        default=None,
        help="CDP_API_PROCESSES of the stack (default: the setting's, one per core)",
    )
    p.add_argument(
        "--event-loop",
        choices=("auto", "uvloop", "asyncio"),
        default=None,
        help="CDP_EVENT_LOOP of the stack (default: the setting's, uvloop when installed)",
    )
    args = p.parse_args(argv)
    quick = args.quick
    args.duration = args.duration or (1 if quick else 12)
    args.drain_events = args.drain_events or (1000 if quick else 200_000)
    args.profiles = args.profiles or (200 if quick else 10_000)
    args.window_size = args.window_size or ("1s" if quick else None)
    args.only = sorted(set(args.only or [1, 2, 3, 4]))
    return args


def main(argv: list[str] | None = None) -> int:
    if shutil.which("wrk") is None:
        print(
            "issue10: wrk is not installed (it drives parts 1 and 2): "
            "apt-get install -y wrk (Debian/Ubuntu), then run this again",
            file=sys.stderr,
        )
        return 2
    args = parse_args(argv)
    command = shlex.join(
        ["python", "benchmarks/issue10.py", *(sys.argv[1:] if argv is None else argv)]
    )
    started = datetime.datetime.now(datetime.UTC)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="cdp-issue10-") as tmp:
        harness = Harness(args, Path(tmp))
        for part in args.only:
            t0 = time.perf_counter()
            getattr(harness, f"part{part}")()
            print(f"part {part} done in {time.perf_counter() - t0:.1f} s", flush=True)
    load_after = os.getloadavg()
    redis_version = subprocess.run(
        [_redis_server(), "--version"], capture_output=True, text=True
    ).stdout.strip()
    print()
    print(f"command: {command}")
    print(
        f"date: {started:%Y-%m-%d %H:%M} UTC; machine: {os.cpu_count()} cores, "
        f"{platform.platform()}, Python {platform.python_version()}; {redis_version}; "
        f"window-size {args.window_size or 'default (5s)'}; "
        f"api-processes {args.api_processes or 'default (one per core)'}; "
        f"event-loop {args.event_loop or 'default (auto)'}"
    )
    print(
        "load average before: {:.2f} {:.2f} {:.2f}; after: {:.2f} {:.2f} {:.2f}".format(
            *load_before, *load_after
        )
    )
    for note in harness.notes:
        print(note)
    print()
    print(table(harness.results, args.only))
    return 0


def _redis_server() -> str:
    from cdp.embedded import find_redis_server

    return find_redis_server()


if __name__ == "__main__":
    sys.exit(main())

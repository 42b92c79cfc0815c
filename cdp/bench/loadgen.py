"""The load generators of ``cdp bench``: wrk when asked and on PATH, else Python processes.

Both send the same requests: ``POST /cdp/ingest`` with one TRACK each (eventId = run id,
generator id, counter: unique; ``ts`` = the second it is sent; one of ``users`` users),
or ``POST /v1/batch`` with ``calls`` track calls each (messageId unique the same way,
write key over HTTP Basic). ``closed`` keeps ``concurrency`` requests in flight for
``seconds`` (wrk -t2 -c<concurrency>, or ``processes`` Python processes sharing the
connections: processes, not threads, so the client is not one GIL); ``paced`` sends
``rate`` requests/s in all (open loop, Python processes only: wrk cannot pace).

Every run reports requests, 2xx answers, the others, p50/p99 latency (ms) and the load
generator's own CPU: user + system seconds of the child processes (``getrusage`` of
children, read after they are waited for) over the run's wall time, in cores and as a
share of the machine (``os.cpu_count()``).

A Python generator process is ``python -c "$CHILD" '<json spec>'``; it prints
one JSON object (its counts and every latency) on stdout.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import aiohttp
import msgspec

from cdp.errors import BenchError
from cdp.events import iso_ms

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

_encoder = msgspec.json.Encoder()
CHILD = "from cdp.bench.loadgen import main; main()"


@dataclass
class Load:
    """What to send: see the module docstring."""

    url: str  # the API's base URL
    kind: str  # "ingest" | "batch"
    run: str  # unique per load: the prefix of every eventId and userId
    seconds: float
    concurrency: int = 64
    rate: float = 0.0  # requests/s in all; > 0: paced (Python processes only)
    users: int = 10_000
    calls: int = 100  # per /v1/batch request
    write_key: str = ""
    processes: int = 0  # Python processes; 0: one per core
    client: str = "auto"  # "auto" | "wrk" | "python"

    @property
    def path(self) -> str:
        return "/cdp/ingest" if self.kind == "ingest" else "/v1/batch"

    @property
    def auth(self) -> str:
        if self.kind != "batch":
            return ""
        return "Basic " + base64.b64encode(f"{self.write_key}:".encode()).decode()


def use_wrk(load: Load) -> bool:
    if load.client == "wrk" and shutil.which("wrk") is None:
        raise BenchError("--client wrk: wrk is not on PATH (apt-get install -y wrk)")
    return load.rate <= 0 and load.client != "python" and shutil.which("wrk") is not None


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def generate(load: Load) -> dict[str, Any]:
    """Run the load; its figures (see the module docstring)."""
    cpu0, start = children_cpu(), time.perf_counter()
    out = run_wrk(load) if use_wrk(load) else run_python(load)
    wall, cpu = time.perf_counter() - start, children_cpu() - cpu0
    cores = cpu / wall if wall > 0 else 0.0
    out["client_cpu_cores"] = round(cores, 2)
    out["client_cpu_share"] = round(cores / (os.cpu_count() or 1), 3)
    return out


def run_wrk(load: Load) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="cdp-bench-wrk-") as tmp:
        script = Path(tmp) / "bench.lua"
        script.write_text(WRK_LUA)
        cmd = ["wrk", "-t2", f"-c{load.concurrency}", f"-d{max(1, round(load.seconds))}s"]
        cmd += ["--latency", "-s", str(script), load.url.rstrip("/") + load.path]
        cmd += ["--", load.run, load.kind, str(load.users), str(load.calls), load.auth]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=load.seconds + 60)
    if done.returncode != 0:
        raise BenchError(f"wrk failed ({done.returncode}): {done.stderr}{done.stdout}")
    got = parse_wrk(done.stdout)
    return {
        "client": f"wrk -t2 -c{load.concurrency}",
        "requests": int(got["requests"]),
        "ok": int(got["requests"] - got["non2xx"]),
        "not_ok": int(got["non2xx"]),
        "seconds": round(got["seconds"], 2),
        "rps": round(got["rps"]),
        "p50_ms": round(got["p50"], 1),
        "p99_ms": round(got["p99"], 1),
    }


def parse_wrk(text: str) -> dict[str, float]:
    def ms(value: str, unit: str) -> float:
        return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}[unit]

    out: dict[str, float] = {"non2xx": 0.0}
    for pct, key in (("50", "p50"), ("99", "p99")):
        m = re.search(rf"^\s*{pct}(?:\.000)?%\s+([\d.]+)(us|ms|s|m)\s*$", text, re.M)
        if not m:
            raise BenchError(f"no {pct}% latency in wrk's output:\n{text}")
        out[key] = ms(m.group(1), m.group(2))
    m = re.search(r"^\s*(\d+) requests in ([\d.]+)(us|ms|s|m)", text, re.M)
    rps = re.search(r"^Requests/sec:\s+([\d.]+)", text, re.M)
    if not m or not rps:
        raise BenchError(f"no request count in wrk's output:\n{text}")
    out["requests"] = float(m.group(1))
    out["seconds"] = ms(m.group(2), m.group(3)) / 1000
    out["rps"] = float(rps.group(1))
    non = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
    errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text
    )
    out["non2xx"] = float(non.group(1)) if non else 0.0
    if errors:
        out["non2xx"] += sum(float(g) for g in errors.groups())
    return out


def run_python(load: Load) -> dict[str, Any]:
    n = load.processes or os.cpu_count() or 1
    procs = []
    for i in range(n):
        spec = asdict(load) | {
            "run": f"{load.run}-{i}",
            "concurrency": max(1, load.concurrency // n + (i < load.concurrency % n)),
            "rate": load.rate / n,
        }
        procs.append(
            subprocess.Popen(
                [sys.executable, "-c", CHILD, json.dumps(spec)],
                stdout=subprocess.PIPE,
                text=True,
            )
        )
    parts = []
    for proc in procs:
        stdout, _ = proc.communicate(timeout=load.seconds + 120)
        if proc.returncode != 0:
            raise BenchError(f"a load generator process failed ({proc.returncode})")
        parts.append(json.loads(stdout.strip().splitlines()[-1]))
    latencies = sorted(x for p in parts for x in p["latencies_ms"])
    cuts = (
        statistics.quantiles(latencies, n=100, method="inclusive")
        if len(latencies) > 1
        else [0.0] * 99
    )
    seconds = max(p["seconds"] for p in parts)
    requests = sum(p["requests"] for p in parts)
    how = f"paced {load.rate:g} req/s" if load.rate > 0 else f"{load.concurrency} in flight"
    return {
        "client": f"python x{n} processes, {how}",
        "requests": requests,
        "ok": sum(p["ok"] for p in parts),
        "not_ok": requests - sum(p["ok"] for p in parts),
        "seconds": round(seconds, 2),
        "rps": round(requests / seconds) if seconds else 0,
        "p50_ms": round(cuts[49], 1),
        "p99_ms": round(cuts[98], 1),
        "behind": sum(p["behind"] for p in parts),
    }


# -- one Python generator process ----------------------------------------------------


def request_body(load: Load, counter: int) -> bytes:
    now = iso_ms(int(time.time() * 1000))
    if load.kind == "ingest":
        payload = {"type": "TRACK", "userId": f"{load.run}-u{counter % load.users}"}
        payload["name"] = "Page Viewed"
        return _encoder.encode({"eventId": f"{load.run}-{counter}", "ts": now, "payload": payload})
    calls = [
        {
            "type": "track",
            "messageId": f"{load.run}-{counter + i}",
            "timestamp": now,
            "userId": f"{load.run}-u{(counter + i) % load.users}",
            "event": "Page Viewed",
        }
        for i in range(load.calls)
    ]
    return _encoder.encode({"batch": calls})


async def _process(load: Load) -> dict[str, Any]:
    url, per = load.url.rstrip("/") + load.path, load.calls if load.kind == "batch" else 1
    headers = {"Content-Type": "application/json"}
    if load.auth:
        headers["Authorization"] = load.auth
    latencies: list[float] = []
    counts = {"requests": 0, "ok": 0, "behind": 0}
    counter = 0
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(
        connector=connector, timeout=aiohttp.ClientTimeout(total=60)
    ) as session:

        async def one() -> None:
            nonlocal counter
            data, counter = request_body(load, counter), counter + per
            started = time.perf_counter()
            try:
                async with session.post(url, data=data, headers=headers) as r:
                    await r.read()
                    counts["ok"] += 200 <= r.status < 300
            except (aiohttp.ClientError, TimeoutError):
                pass
            counts["requests"] += 1
            latencies.append((time.perf_counter() - started) * 1000)

        start = time.perf_counter()
        end = start + load.seconds
        if load.rate > 0:
            await _paced(load, one, start, end, counts)
        else:

            async def closed() -> None:
                while time.perf_counter() < end:
                    await one()

            await asyncio.gather(*(closed() for _ in range(load.concurrency)))
        seconds = time.perf_counter() - start
    return counts | {"seconds": seconds, "latencies_ms": [round(x, 3) for x in latencies]}


async def _paced(load: Load, one: Any, start: float, end: float, counts: dict[str, int]) -> None:
    """Open loop: request i is due at start + i / rate; at most 256 in flight."""
    in_flight: set[asyncio.Task[None]] = set()
    i = 0
    while (due := start + i / load.rate) < end:
        if (wait := due - time.perf_counter()) > 0:
            await asyncio.sleep(wait)
        i += 1
        if len(in_flight) >= 256:
            counts["behind"] += 1  # the API is not keeping up: not sent
            continue
        task = asyncio.create_task(one())
        in_flight.add(task)
        task.add_done_callback(in_flight.discard)
    if in_flight:
        await asyncio.gather(*in_flight)


def main() -> None:
    load = Load(**json.loads(sys.argv[1]))
    print(json.dumps(asyncio.run(_process(load)), separators=(",", ":")))


if __name__ == "__main__":
    main()

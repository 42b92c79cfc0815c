"""Issue 10's table on this machine: the "3 runs, medians" driver of ``cdp bench``.

    python benchmarks/issue10.py [--quick] [--runs 3] [--only ROW ...]
                                 [--api-processes N] [--event-loop auto|uvloop|asyncio]
                                 [--stack-root PATH] [--save FILE] [--before FILE]
                                 [--duration 12] [--drain 200000] [--profiles 10000]
                                 [--sustain-seconds 60] [--window-size 5s]

For each run and each row (ingest, batch, drain, sustained, freshness, memory) it
starts a stack of its own (``cdp.chaos.cluster.Cluster``: the embedded redis-server
with AOF everysec on a free port in a temp dir, one ``cdp api``, 2 ``cdp worker``
processes, default settings but a write key and an admin token), runs
``python -m cdp bench --only ROW`` against it (wrk when on PATH, else Python client
processes; see cdp/bench/), reads its JSON line, and stops the stack. The freshness
row runs at half the sustained rate of the same run (``--fresh-rate`` without one).

The table gives each row: the issue's "today" column, the "before" column, and this
run's median (the runs' values in brackets). "before" is the run of 2026-12-01 08:30
(medians of 3 quiet runs of the earlier harness, benchmarks/README.md; sustained and
freshness were not measured then), or, with ``--before FILE``, the medians a run with
``--save FILE`` stored, e.g. a run of the old code with the new harness:

    git worktree add /work/wt/before 96b78b4
    python benchmarks/issue10.py --stack-root /work/wt/before --save /tmp/before.json
    python benchmarks/issue10.py --before /tmp/before.json

``--stack-root PATH``: ``cdp api`` and ``cdp worker`` run from that checkout
(``PYTHONPATH=PATH``, cwd PATH; the same Python and redis-server), while ``cdp bench``
runs from this one. The HTTP rows (ingest, batch, sustained, freshness) only talk to
the API; the drain publishes with this checkout's publisher and the memory row applies
with this checkout's scripts, so those two measure the old code only if the stream
entry format and the scripts are unchanged.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `python benchmarks/issue10.py` from a checkout
    sys.path.insert(0, str(ROOT))

from cdp.chaos.cluster import Cluster  # noqa: E402

WRITE_KEY, ADMIN_TOKEN = "benchkey", "benchadmin"
STACK_ENV = {
    "CDP_WRITE_KEYS": f"{WRITE_KEY}=bench",
    "CDP_ADMIN_TOKEN": ADMIN_TOKEN,
    "CDP_LOG_LEVEL": "warning",
}
WORKERS = 2
ORDER = ["ingest", "batch", "drain", "sustained", "freshness", "memory"]

# key -> (row, figure, the "today", before: the 08:30 run, medians of 3)
ROWS: dict[str, tuple[str, str, str, str]] = {
    "ingest_rps": ("ingest", "single-event POST /cdp/ingest, req/s", "4.8k", "4,422"),
    "ingest_p50_ms": ("ingest", "single-event POST /cdp/ingest, p50 ms", "-", "11.2"),
    "ingest_p99_ms": ("ingest", "single-event POST /cdp/ingest, p99 ms", "45", "54.5"),
    "batch_rps": ("batch", "/v1/batch x100, req/s", "139", "219"),
    "batch_eps": ("batch", "/v1/batch x100, events/s accepted", "13.9k", "21,978"),
    "batch_p99_ms": ("batch", "/v1/batch x100, p99 ms", "281", "687.4"),
    "drain_eps": ("drain", "drain, 2 workers, events/s", "15.4k", "10,896 *"),
    "redis_us": ("drain", "Redis CPU per applied event, us", "~40", "75.0"),
    "worker_us": ("drain", "worker CPU per applied event, us", "~23", "51.2"),
    "sustained_eps": ("sustained", "sustained, backlog flat, events/s", "~14k", "-"),
    "fresh_p50_s": ("freshness", "freshness at half the sustained rate, p50 s", "5.9", "-"),
    "fresh_p99_s": ("freshness", "freshness at half the sustained rate, p99 s", "-", "-"),
    "fresh_max_s": ("freshness", "freshness at half the sustained rate, max s", "6.0", "-"),
    "profile_bytes": ("memory", "Redis memory per profile, B", "3.0 KB", "2,835 *"),
    "keys_per_profile": ("memory", "keys per profile", "11", "10.50"),
    "traits_encoding": ("memory", "traits hash encoding", "hashtable", "hashtable"),
    "eventid_bytes": ("memory", "Redis memory per remembered eventId, B", "~102", "88 *"),
}
BEFORE_NOTE = (
    "* measured differently by the earlier harness: the drain from the first read of a"
    " backlog already due (not from T0 + window-size); memory on a whole stack's"
    " used_memory after deleting the streams and dedup hashes (not keys under bench:<run>)"
)


class RootedCluster(Cluster):
    """A Cluster whose ``cdp api`` and ``cdp worker`` run from ``root``."""

    def __init__(self, root: Path | None, *args: Any) -> None:
        super().__init__(*args)
        self.root = root
        self.cwd = root

    @property
    def env(self) -> dict[str, str]:
        env = super().env
        if self.root is not None:
            env["PYTHONPATH"] = str(self.root)
        return env


def bench_args(args: argparse.Namespace, row: str, sustained: float | None) -> list[str]:
    out = ["--only", row, "--duration", str(args.duration), "--drain", str(args.drain)]
    out += ["--profiles", str(args.profiles), "--sustain-seconds", str(args.sustain_seconds)]
    out += ["--sustain-start", str(args.sustain_start), "--client", args.client]
    out += ["--sustain-steps", str(args.sustain_steps)]
    if row == "freshness":
        rate = args.fresh_rate or (sustained / 2 if sustained else 5_000)
        out += ["--fresh-rate", str(rate), "--fresh-seconds", str(args.sustain_seconds)]
    return out


def run_row(
    args: argparse.Namespace, tmp: Path, n: int, row: str, sustained: float | None
) -> dict[str, Any]:
    env = dict(STACK_ENV)
    if args.window_size:
        env["CDP_WINDOW_SIZE"] = args.window_size
    if args.api_processes is not None:
        env["CDP_API_PROCESSES"] = str(args.api_processes)
    if args.event_loop:
        env["CDP_EVENT_LOOP"] = args.event_loop
    cluster = RootedCluster(args.stack_root, tmp / f"run{n}-{row}", WORKERS, "everysec", env)
    try:
        cluster.start()
        bench_env = {k: v for k, v in os.environ.items() if not k.startswith("CDP_")}
        bench_env |= env | {"CDP_REDIS_URL": cluster.redis.url, "PYTHONPATH": str(ROOT)}
        cmd = [sys.executable, "-m", "cdp", "bench", "--url", cluster.api_url]
        cmd += bench_args(args, row, sustained)
        print("$", shlex.join(["cdp", "bench", *cmd[4:]]), flush=True)
        done = subprocess.run(cmd, env=bench_env, cwd=ROOT, capture_output=True, text=True)
    finally:
        cluster.stop()
    if done.returncode != 0:
        raise SystemExit(
            f"issue10: cdp bench failed ({done.returncode}):\n{done.stdout}{done.stderr}"
        )
    print(done.stdout.rsplit("\n", 2)[0], flush=True)  # all but the JSON line
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def median(values: list[Any]) -> Any:
    nums = [v for v in values if isinstance(v, int | float)]
    if not nums:
        return values[0] if values else None
    return statistics.median(nums)


def fmt(key: str, value: Any) -> str:
    if not isinstance(value, int | float):
        return "-" if value is None else str(value)
    if key.endswith(("_ms", "_us")) or key == "keys_per_profile":
        return f"{value:.1f}" if key != "keys_per_profile" else f"{value:.2f}"
    if key.endswith("_s"):
        return f"{value:.2f}"
    return f"{value:,.0f}"


def table(runs: list[dict[str, Any]], rows: list[str], before: dict[str, Any] | None) -> str:
    head = '| figure | issue 10 "today" | before | this run: median'
    lines = [head + (f" ({len(runs)} runs) |" if len(runs) > 1 else " |"), "|---|---|---|---|"]
    for key, (row, figure, today, old) in ROWS.items():
        if row not in rows:
            continue
        values = [r.get(key) for r in runs]
        value = fmt(key, median(values))
        if len(runs) > 1:
            value += " (" + " / ".join(fmt(key, v) for v in values) + ")"
        was = fmt(key, before.get(key)) if before is not None else old
        lines.append(f"| {figure} | {today} | {was} | {value} |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--quick", action="store_true", help="tiny sizes, 1 run: a smoke test")
    p.add_argument("--runs", type=int, default=None, help="runs (3; --quick: 1)")
    p.add_argument("--only", action="append", choices=ORDER, default=None, help="repeatable")
    p.add_argument("--stack-root", type=Path, default=None, help="run the stack from there")
    p.add_argument("--save", type=Path, default=None, help="write the medians (JSON) there")
    p.add_argument("--before", type=Path, default=None, help="before column from --save'd JSON")
    p.add_argument("--client", choices=("auto", "wrk", "python"), default="auto")
    p.add_argument("--duration", type=float, default=None, help="ingest/batch seconds (12)")
    p.add_argument("--drain", type=int, default=None, help="drain backlog (200000)")
    p.add_argument("--profiles", type=int, default=None, help="memory row (10000)")
    p.add_argument("--sustain-seconds", type=float, default=None, help="per step (60)")
    p.add_argument("--sustain-start", type=float, default=None, help="events/s (5000)")
    p.add_argument("--sustain-steps", type=int, default=None, help="x1.5 each (6; --quick 2)")
    p.add_argument("--fresh-rate", type=float, default=0.0, help="default: sustained / 2")
    p.add_argument("--window-size", default=None, help="the stack's (default 5s; --quick 1s)")
    p.add_argument(
        "--api-processes", type=int, default=None, help="the stack's (default: one per core)"
    )
    p.add_argument(
        "--event-loop", choices=("auto", "uvloop", "asyncio"), default=None, help="the stack's"
    )
    args = p.parse_args(argv)
    q = args.quick
    args.runs = args.runs or (1 if q else 3)
    args.duration = args.duration or (1 if q else 12)
    args.drain = args.drain or (1000 if q else 200_000)
    args.profiles = args.profiles or (200 if q else 10_000)
    args.sustain_seconds = args.sustain_seconds or (5 if q else 60)
    args.sustain_start = args.sustain_start or (1000 if q else 5000)
    args.sustain_steps = args.sustain_steps or (2 if q else 6)
    args.window_size = args.window_size or ("1s" if q else None)
    args.only = [r for r in ORDER if r in (args.only or ORDER)]
    if args.stack_root is not None and not (args.stack_root / "cdp" / "__main__.py").exists():
        p.error(f"--stack-root {args.stack_root}: no cdp/__main__.py there")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # SIGTERM (and SIGINT, ignored in background jobs) stop the stack of the row running.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    command = shlex.join(
        ["python", "benchmarks/issue10.py", *(sys.argv[1:] if argv is None else argv)]
    )
    before = json.loads(args.before.read_text()) if args.before else None
    started = datetime.datetime.now(datetime.UTC)
    load_before = os.getloadavg()
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="cdp-issue10-") as tmp:
        for n in range(args.runs):
            result: dict[str, Any] = {}
            for row in args.only:
                t0 = time.perf_counter()
                got = run_row(args, Path(tmp), n, row, result.get("sustained_eps"))
                result |= {k: v for k, v in got.items() if k in ROWS}
                print(f"run {n + 1}, {row} done in {time.perf_counter() - t0:.1f} s", flush=True)
            runs.append(result)
    load_after = os.getloadavg()
    medians = {key: median([r.get(key) for r in runs]) for key in ROWS}
    if args.save:
        args.save.write_text(json.dumps(medians | {"command": command}, indent=1))
    client = args.client if args.client != "auto" else ("wrk" if shutil.which("wrk") else "python")
    print()
    print(f"command: {command}")
    print(
        f"date: {started:%Y-%m-%d %H:%M} UTC; machine: {os.cpu_count()} cores, "
        f"{platform.platform()}, Python {platform.python_version()}; "
        f"window-size {args.window_size or 'default (5s)'}; closed-loop client: {client}; "
        f"stack from {args.stack_root or ROOT}"
    )
    print(
        "load average before: {:.2f} {:.2f} {:.2f}; after: {:.2f} {:.2f} {:.2f}".format(
            *load_before, *load_after
        )
    )
    print(f"before: {args.before or 'the run of 2026-12-01 08:30 (benchmarks/README.md)'}")
    if before is None:
        print(BEFORE_NOTE)
    print()
    print(table(runs, args.only, before))
    return 0


if __name__ == "__main__":
    sys.exit(main())

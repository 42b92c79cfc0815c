"""Issue 11: one Redis against a 3-master Redis Cluster, in the same run, side by side.

    python benchmarks/issue11.py [--rows ingest,batch,drain,merges] [--runs 1]
                                 [--duration 8] [--drain 50000] [--merges 1000]
                                 [--masters 3] [--workers 2] [--api-processes 2]

It starts two stacks the way a user does, each in a temp dir on free ports:
``cdp up`` (one embedded redis-server, AOF everysec) and ``cdp up --cluster 3`` (three
masters from the same binary, AOF everysec each), each with ``--workers`` workers and
``--api-processes`` API processes, then runs ``cdp bench --only ROW`` against one
stack and right after against the other, row by row (both stay up all along: an idle
stack costs little, and back-to-back rows share the machine's conditions), reads each
run's JSON line and prints the figures side by side with their ratio.

Rows: ``ingest`` (single-event POST, wrk when on PATH), ``batch`` (/v1/batch x100),
``drain`` (a backlog published into the partition streams, applied by the workers:
events/s, Redis CPU and worker CPU per event), ``merges`` (the merge cost through
the stack: Redis CPU and script usec per ALIAS that merges two small profiles, less
one that links, summed over the masters: on one node that is one script in one slot,
on the cluster the profile protocol's calls across slots).

``drain`` and ``merges`` need workers that apply on a cluster (the ``apply-protocol``
setting of the profile protocol): in a checkout without it the cluster stack runs
without workers and those rows say "n/a" for the cluster.

On a 2-core machine the three masters, the API processes, the workers and the load
generator share the same two cores: the point is the cost of the protocol (CPU per
event, per merge), not a speed-up. benchmarks/README.md ("Issue 11") has the figures
and the projection per added master.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `python benchmarks/issue11.py` from a checkout
    sys.path.insert(0, str(ROOT))

from cdp.embedded import free_port  # noqa: E402
from cdp.embedded_cluster import choose_ports  # noqa: E402
from cdp.settings import Settings  # noqa: E402

WRITE_KEY, ADMIN_TOKEN = "benchkey", "benchadmin"
ROWS = ("ingest", "batch", "drain", "merges")
NEEDS_APPLY = ("drain", "merges")
# key -> (row, label)
FIGURES: dict[str, tuple[str, str]] = {
    "ingest_rps": ("ingest", "single-event POST /cdp/ingest, req/s"),
    "ingest_p99_ms": ("ingest", "single-event POST /cdp/ingest, p99 ms"),
    "batch_eps": ("batch", "/v1/batch x100, events/s accepted"),
    "batch_p99_ms": ("batch", "/v1/batch x100, p99 ms"),
    "drain_eps": ("drain", "drain, events/s"),
    "redis_us": ("drain", "Redis CPU per applied event, us (all masters)"),
    "worker_us": ("drain", "worker CPU per applied event, us"),
    "merge_e2e_cpu_us": ("merges", "merge: Redis CPU us per merge (all masters)"),
    "merge_e2e_script_us": ("merges", "merge: script usec per merge (all masters)"),
    "merge_e2e_calls": ("merges", "merging ALIAS: Redis commands per event"),
    "link_e2e_calls": ("merges", "linking ALIAS: Redis commands per event"),
}


def cluster_applies() -> bool:
    """Do the workers of this checkout apply events on a cluster (the profile protocol)?"""
    return "apply_protocol" in Settings.__dataclass_fields__


@dataclass
class Up:
    """One ``cdp up`` (single Redis, or ``--cluster N``) in a subprocess."""

    name: str
    data_dir: Path
    flags: list[str]
    api: str = ""
    redis: str = ""
    proc: subprocess.Popen[bytes] | None = None
    log: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log = self.data_dir.with_suffix(".log")

    def start(self, timeout: float = 90) -> None:
        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("CDP_")}
        env |= {"CDP_WRITE_KEYS": WRITE_KEY, "CDP_ADMIN_TOKEN": ADMIN_TOKEN}
        env |= {"CDP_LOG_LEVEL": "warning", "PYTHONPATH": str(ROOT)}
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "cdp", "up", "--port", str(port)]
                + ["--data-dir", str(self.data_dir), *self.flags],
                env=env,
                cwd=ROOT,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # our Ctrl-C reaches it through stop() only
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = re.search(r"cdp is up: API (\S+)\s+Redis(?: Cluster)? (\S+)", self.output())
            if found:
                self.api, self.redis = found.group(1), found.group(2)
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.2)
        raise SystemExit(f"{self.name}: cdp up did not come up:\n{self.output()[-3000:]}")

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


@contextlib.contextmanager
def stacks(args: argparse.Namespace, applies: bool) -> Iterator[list[Up]]:
    with tempfile.TemporaryDirectory(prefix="cdp-issue11-") as tmp:
        common = ["--api-processes", str(args.api_processes)]
        first = choose_ports(args.masters)[0]
        cluster_workers = args.workers if applies else 0
        ups = [
            Up(
                "one Redis",
                Path(tmp) / "single",
                ["--redis-port", str(free_port()), "--workers", str(args.workers), *common],
            ),
            Up(
                f"cluster x{args.masters}",
                Path(tmp) / "cluster",
                ["--cluster", str(args.masters), "--redis-port", str(first)]
                + ["--workers", str(cluster_workers), *common],
            ),
        ]
        try:
            for up in ups:
                up.start()
                print(f"{up.name}: API {up.api}, Redis {up.redis}", flush=True)
            yield ups
        finally:
            for up in ups:
                up.stop()


def bench(up: Up, row: str, args: argparse.Namespace) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CDP_")}
    env |= {"CDP_REDIS_URL": up.redis, "CDP_WRITE_KEYS": WRITE_KEY}
    env |= {"CDP_ADMIN_TOKEN": ADMIN_TOKEN, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "cdp", "bench", "--url", up.api, "--only", row]
    command += ["--duration", str(args.duration), "--drain", str(args.drain)]
    command += ["--merges", str(args.merges), "--write-key", WRITE_KEY]
    done = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True)
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines or not lines[-1].startswith("{"):
        print(f"{up.name}: cdp bench --only {row} failed:\n{done.stdout}{done.stderr}")
        return {}
    result: dict[str, Any] = json.loads(lines[-1])
    for note in result.get("notes", []):
        print(f"  {up.name}: {note}")
    return result


def median(values: list[Any]) -> Any:
    numbers = [v for v in values if isinstance(v, int | float)]
    return statistics.median(numbers) if numbers else None


def shown(value: Any) -> str:
    if value is None:
        return "n/a"
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:,.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", default=",".join(ROWS))
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--drain", type=int, default=50_000)
    parser.add_argument("--merges", type=int, default=1_000)
    parser.add_argument("--masters", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--api-processes", type=int, default=2)
    args = parser.parse_args()
    rows = [r for r in args.rows.split(",") if r]
    if bad := [r for r in rows if r not in ROWS]:
        parser.error(f"--rows: unknown {bad} (of {', '.join(ROWS)})")
    applies = cluster_applies()
    got: dict[str, dict[str, list[Any]]] = {"one Redis": {}, f"cluster x{args.masters}": {}}
    with stacks(args, applies) as ups:
        for run in range(args.runs):
            for row in rows:
                for up in ups:
                    if row in NEEDS_APPLY and up.name.startswith("cluster") and not applies:
                        continue
                    print(f"run {run + 1}: {row} on {up.name}", flush=True)
                    result = bench(up, row, args)
                    for key, (of, _) in FIGURES.items():
                        if of == row:
                            got[up.name].setdefault(key, []).append(result.get(key))
    single, cluster = got.values()
    names = list(got)
    print(
        f"\nissue 11, {args.runs} run(s), medians; {args.workers} workers and "
        f"{args.api_processes} API processes per stack; {os.cpu_count()} cores\n"
    )
    print(f"{'':50} {names[0]:>12} {names[1]:>12} {'ratio':>7}")
    for key, (row, label) in FIGURES.items():
        if row not in rows:
            continue
        a, b = median(single.get(key, [])), median(cluster.get(key, []))
        ratio = f"{b / a:.2f}" if a and b is not None else "-"
        print(f"{label:50} {shown(a):>12} {shown(b):>12} {ratio:>7}")
    if not applies and set(rows) & set(NEEDS_APPLY):
        print("\nn/a: the workers of this checkout do not apply events on a cluster yet")
    print(json.dumps({"single": single, "cluster": cluster}, separators=(",", ":")))


if __name__ == "__main__":
    main()

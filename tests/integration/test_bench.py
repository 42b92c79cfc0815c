"""``cdp bench`` as a user runs it, against a live API and worker: the flags, the table
and the JSON line keep their shape (README's Benchmark section and benchmarks/README.md
describe them), the figures are there, and nothing of the run is left in Redis."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from cdp import keys
from cdp.embedded import free_port
from tests.support.stack import ROOT, Stack
from tests.support.wait import wait_until

pytestmark = pytest.mark.integration

# Every row of the table, in order (batch-size 200 adds its own row after 100).
LABELS = [
    "ingest: accepted events/s",
    "ingest: latency p50 ms",
    "ingest: latency p99 ms",
    "ingest: answers other than 202",
    "end to end: applied events/s",
    "end to end: profiles merged",
    "end to end: merges or links refused",
    "end to end: counted late",
    "end to end: first send -> all done, s",
    "end to end: last 202 -> all done, s",
    "redis: XADD by 100, events/s",
    "redis: EVALSHA 5 cmds by 100, calls/s",
    "apply_batch, 1 event/call: events/s",
    "apply_batch, 10 events/call: events/s",
    "apply_batch, 100 events/call: events/s",
    "apply_batch, 200 events/call: events/s",
    "memory: bytes per dedup entry",
    "memory: bytes per profile",
    "memory: keys per profile",
    "redis: usec per ALIAS merging 2 profiles",
    "redis: usec per ALIAS linking a new id",
    "redis: usec per merge (difference)",
]


def bench(redis_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CDP_")}
    env |= {"CDP_REDIS_URL": redis_url, "CDP_WINDOW_SIZE": "500ms"}
    return subprocess.run(
        [sys.executable, "-m", "cdp", "bench", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
    )


def test_bench_prints_its_table_and_json_line_and_cleans_up(stack: Stack) -> None:
    live = {"clock": "system", "window_size": "500ms"}
    stack.start_api(**live)
    stack.start_worker(**live)
    wait_until(lambda: stack.r.zcard(keys.WORKERS), timeout=30, message="a live worker")
    done = bench(
        stack.redis_url,
        *("--url", f"http://127.0.0.1:{stack.api_port}/", "--events", "200"),
        *("--concurrency", "8", "--users", "20", "--merge-ratio", "0.1"),
    )
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    result = json.loads(lines[-1])
    run = result["run"]
    header = (
        f"cdp bench, run {run}: 200 events, 8 in flight, 20 users, merge-ratio 0.1 after a"
        " warm-up of 40; window-size 500ms (as set for this command), 16 partitions,"
        " 1 workers, batch-size 200;"
    )
    assert any(line.startswith(header) for line in lines), done.stdout
    rows = [line[:42].rstrip() for line in lines if line[:42].rstrip() in LABELS]
    assert rows == LABELS, done.stdout
    assert result["accepted"] == 200 and result["not_accepted"] == {}
    assert result["e2e_done"] == 200 and result["warmup_events"] == 40
    assert result["alias_merges"] == 20 and result["merges"] >= 20
    for key in ("xadd_eps", "evalsha_cps", "apply_eps_batch_1", "apply_eps_batch_200"):
        assert result[key] > 0, key
    assert result["merge_alias_us"] > 0 and result["keys_per_profile"] > 0
    assert "warning" not in done.stdout, done.stdout
    assert stack.r.keys(f"bench:{run}:*") == []


def test_bench_refuses_bad_flags_and_an_unreachable_api(redis_url: str) -> None:
    done = bench(redis_url, "--events", "0")
    assert done.returncode == 2
    assert "--events, --concurrency and --users must be at least 1" in done.stderr
    done = bench(redis_url, "--merge-ratio", "1.5")
    assert (done.returncode, done.stderr) == (2, "cdp: --merge-ratio must be between 0 and 1\n")
    done = bench(redis_url, "--url", f"http://127.0.0.1:{free_port()}")
    assert done.returncode == 2
    assert "cdp: cannot reach the API at http://127.0.0.1:" in done.stderr

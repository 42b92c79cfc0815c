"""``cdp bench`` as a user runs it, against a live API and 2 worker processes: every row
of issue 10's table prints a number on a tiny run (the multi-process Python client here;
wrk's path when wrk is installed), the last line is one JSON object, the drain finds
the workers' pids, and nothing of the run is left under ``bench:<run>``. No figure is
asserted beyond "there is one": a timed test on a shared machine would only be flaky."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from typing import Any

import pytest

from cdp import keys
from cdp.bench.report import ROWS
from cdp.embedded import free_port
from tests.support.stack import ROOT, Stack
from tests.support.wait import wait_until

pytestmark = pytest.mark.integration

LIVE = {"clock": "system", "window_size": "500ms", "write_keys": "bk=bench", "admin_token": "adm"}
# The drain is big enough for the workers' CPU to show in /proc (10 ms ticks): 3,000
# events at ~40 us each.
TINY = [
    *("--duration", "1", "--concurrency", "4", "--processes", "2", "--drain", "3000"),
    *("--sustain-seconds", "4", "--sustain-start", "1000", "--sustain-steps", "2"),
    *("--calls", "10"),
    *("--fresh-seconds", "3", "--profiles", "150"),
]


def bench(redis_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CDP_")}
    env |= {f"CDP_{k.upper()}": v for k, v in LIVE.items()} | {"CDP_REDIS_URL": redis_url}
    env["CDP_TICKER_INTERVAL"] = Stack.TEST_ENV["CDP_TICKER_INTERVAL"]
    return subprocess.run(
        [sys.executable, "-m", "cdp", "bench", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )


def live_stack(stack: Stack, workers: int = 2) -> list[int]:
    stack.start_api(**LIVE)
    pids = [stack.start_worker(**LIVE).pid for _ in range(workers)]
    wait_until(lambda: stack.r.zcard(keys.WORKERS) >= workers, timeout=30, message="workers")
    return pids


def numbers(stdout: str, rows: list[str]) -> dict[str, str]:
    """label -> the value printed for it, for every label of ``rows``."""
    out = {}
    for row in rows:
        for key, label in ROWS[row]:
            text = label.format(**json.loads(stdout.splitlines()[-1]))
            m = re.search(rf"^{re.escape(text)} +(\S+)", stdout, re.M)
            assert m, f"no row {text!r}\n{stdout}"
            out[key] = m.group(1)
    return out


def test_every_issue_row_prints_a_number_with_python_clients(stack: Stack) -> None:
    pids = live_stack(stack)
    done = bench(stack.redis_url, "--url", f"http://127.0.0.1:{stack.api_port}/", *TINY,
                 "--client", "python")  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    result: dict[str, Any] = json.loads(done.stdout.splitlines()[-1])
    rows = ["ingest", "batch", "drain", "sustained", "freshness", "memory"]
    assert result["rows"] == rows
    for key, value in numbers(done.stdout, rows).items():
        if key == "traits_encoding":
            assert value in ("hashtable", "ziplist", "listpack"), value
        else:
            assert re.fullmatch(r"-?[\d,]+(\.\d+)?", value), (
                key,
                value,
                done.stdout,
            )  # memory: noisy on a live stack
    assert result["ingest_client"].startswith("python x2 processes")
    assert result["ingest_client_cpu"] > 0 and result["batch_eps"] > 0
    assert sorted(result["worker_pids"]) == sorted(pids)  # the /proc scan found both
    assert result["drain_eps"] > 0 and result["redis_us"] > 0 and result["worker_us"] > 0
    assert re.search(r"^sustained: 1,000/s: accepted [\d,]+/s, backlog", done.stdout, re.M)
    assert result["fresh_samples"] >= 1
    assert result["fresh_p50_s"] <= result["fresh_max_s"]
    assert "bare Redis: XADD" in done.stdout and result["xadd_eps"] > 0
    assert "warning" not in done.stdout, done.stdout
    assert stack.r.keys(f"bench:{result['run']}:*") == []


@pytest.mark.skipif(
    shutil.which("wrk") is None,
    reason="wrk is not installed (apt-get install -y wrk): its path is not exercised",
)
def test_ingest_and_batch_rows_with_wrk(stack: Stack) -> None:
    live_stack(stack, workers=1)
    url = f"http://127.0.0.1:{stack.api_port}"
    done = bench(stack.redis_url, "--url", url, *TINY, "--only", "ingest", "--only", "batch")
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads(done.stdout.splitlines()[-1])
    assert result["rows"] == ["ingest", "batch"]
    assert result["ingest_client"] == result["batch_client"] == "wrk -t2 -c4"
    for key, value in numbers(done.stdout, ["ingest", "batch"]).items():
        assert float(value.replace(",", "")) > 0, (key, value)
    assert result["ingest_not_ok"] == result["batch_not_ok"] == 0


def test_mixed_row_keeps_the_earlier_bench(stack: Stack) -> None:
    live_stack(stack, workers=1)
    done = bench(
        stack.redis_url,
        *("--url", f"http://127.0.0.1:{stack.api_port}", "--only", "mixed", "--events", "200"),
        *("--concurrency", "8", "--users", "20", "--merge-ratio", "0.1"),
    )
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads(done.stdout.splitlines()[-1])
    assert result["mixed_accepted"] == 200 and result["mixed_not_accepted"] == {}
    assert result["mixed_e2e_done"] == 200 and result["mixed_warmup_events"] == 40
    assert result["mixed_alias_merges"] == 20 and result["mixed_merges"] >= 20
    for key in ("xadd_eps", "evalsha_cps", "apply_eps_batch_1", "apply_eps_batch_200"):
        assert result[f"mixed_{key}"] > 0, key
    assert result["mixed_merge_alias_us"] > 0 and result["mixed_keys_per_profile"] > 0
    numbers(done.stdout, ["mixed"])
    assert "warning" not in done.stdout, done.stdout
    assert stack.r.keys(f"bench:{result['run']}:*") == []


def test_bench_refuses_bad_flags_and_an_unreachable_api(redis_url: str) -> None:
    done = bench(redis_url, "--events", "0")
    assert done.returncode == 2
    assert "--events, --concurrency, --users, --calls, --drain and --profiles" in done.stderr
    done = bench(redis_url, "--merge-ratio", "1.5")
    assert (done.returncode, done.stderr) == (2, "cdp: --merge-ratio must be between 0 and 1\n")
    done = bench(redis_url, "--only", "nope")
    assert done.returncode == 2 and "--only: unknown row 'nope'" in done.stderr
    done = bench(redis_url, "--url", f"http://127.0.0.1:{free_port()}")
    assert done.returncode == 2
    assert "cdp: cannot reach the API at http://127.0.0.1:" in done.stderr


def test_merges_row_prints_the_merge_cost_through_the_stack(stack: Stack) -> None:
    live_stack(stack, workers=1)
    done = bench(
        stack.redis_url,
        *("--url", f"http://127.0.0.1:{stack.api_port}", "--only", "merges", "--merges", "30"),
        *("--concurrency", "8"),
    )
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads(done.stdout.splitlines()[-1])
    assert result["rows"] == ["merges"] and result["merges_pairs"] == 30
    assert result["masters"] == 1
    # Each merging ALIAS ran more commands than a linking one (the merge's writes).
    assert result["merge_e2e_calls"] > result["link_e2e_calls"] > 0
    numbers(done.stdout, ["merges"])
    assert "warning" not in done.stdout and "applied" not in done.stdout, done.stdout
    merged = [f for _, f in stack.r.xrange(keys.MERGES) if f["status"] == "merged"]
    assert len(merged) == 30


def test_bench_against_a_cluster_sums_every_master(redis_cluster_url: str, tmp_path: Any) -> None:
    """The ingest row and the bare-Redis figures on the 3-master cluster: the header
    names the masters, the run's ``bench:<run>`` keys (on every master) are deleted;
    the memory row (one Redis only) is skipped with a note."""
    from cdp.connect import sync_client

    client = sync_client(redis_cluster_url, "yes", decode_responses=True)
    stack = Stack(redis_cluster_url, client, tmp_path)  # type: ignore[arg-type]
    try:
        stack.start_api(**LIVE)
        done = bench(
            redis_cluster_url,
            *("--url", f"http://127.0.0.1:{stack.api_port}", "--only", "ingest"),
            *("--only", "memory", "--duration", "1", "--concurrency", "4", "--processes", "1"),
            *("--client", "python"),
        )
        assert done.returncode == 0, done.stdout + done.stderr
        result = json.loads(done.stdout.splitlines()[-1])
        assert result["masters"] == 3 and "a cluster of 3 masters" in done.stdout
        assert int(numbers(done.stdout, ["ingest"])["ingest_rps"].replace(",", "")) > 0
        assert result["xadd_eps"] > 0 and result["evalsha_cps"] > 0
        assert list(client.scan_iter(match=f"bench:{result['run']}:*")) == []
        assert result["ingest_not_ok"] == 0
        # apply_batch under bench:<run> keys cannot run on a cluster: said, not attempted.
        assert "memory: not measured on a cluster" in done.stdout
        assert "profile_bytes" not in result
    finally:
        stack.close()
        client.close()

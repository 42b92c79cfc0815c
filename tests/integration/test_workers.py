"""Worker processes under crashes and scale-out: SIGKILL mid-stream, a second worker
joining, leases moving, and not one event applied twice or lost."""

from __future__ import annotations

import json
import signal
from collections import Counter

import pytest

from cdp import keys
from tests.support.stack import Stack
from tests.support.values import T0
from tests.support.wait import wait_until

pytestmark = pytest.mark.integration


def lease_owners(stack: Stack) -> Counter[str]:
    owners = (stack.r.get(keys.lease(p)) for p in range(stack.partitions))
    return Counter(o for o in owners if o)


def send_tracks(stack: Stack, n: int, users: int = 40, prefix: str = "evt") -> None:
    for i in range(n):
        stack.send(
            f"{prefix}-{i}",
            f"2025-10-04T10:00:{i % 60:02d}.{i // 60:03d}Z",
            type="TRACK",
            userId=f"u{i % users}",
            name="Clicked",
        )


def total_count(stack: Stack, users: int) -> int:
    total = 0
    for u in range(users):
        cid = stack.r.get(keys.identifier(f"user:u{u}"))
        if cid:
            total += int(
                sum(
                    s
                    for _, s in stack.r.zrange(keys.counter(cid, "Clicked"), 0, -1, withscores=True)
                )
            )
    return total


def test_sigkill_mid_stream_then_redelivery_counts_every_event_once(stack: Stack) -> None:
    n, users = 400, 40
    stack.set_clock(T0)
    stack.start_api()
    victim = stack.start_worker("victim")
    send_tracks(stack, n, users)
    wait_until(lambda: stack.pending() == n, message="every event read into a buffer")
    stack.set_clock("2025-10-04T10:00:25Z")  # the watermark passes the first third
    stack.wait_metric("processed", 1)
    stack.kill(victim, signal.SIGKILL)
    assert 0 < stack.metric("processed") < n
    stack.set_clock("2025-10-04T10:02:00Z")
    # The client never heard back for some events and sends everything again.
    send_tracks(stack, n, users)
    stack.start_worker("heir")
    wait_until(
        lambda: stack.metric("processed") + stack.metric("dedup_hits") >= 2 * n,
        timeout=30,
        message="every delivery applied or recognised as a duplicate",
    )
    stack.wait_idle()
    assert stack.metric("processed") == n
    assert stack.metric("dedup_hits") == n
    assert total_count(stack, users) == n
    assert stack.pending() == 0
    assert set(lease_owners(stack)) == {"heir"}


def test_a_second_worker_takes_over_partitions_and_both_apply(stack: Stack) -> None:
    n, users = 300, 60
    stack.set_clock(T0)
    stack.start_api()
    first = stack.start_worker("w1")
    wait_until(
        lambda: lease_owners(stack) == Counter({"w1": stack.partitions}), message="w1 owns all"
    )
    second = stack.start_worker("w2")
    wait_until(
        lambda: (
            lease_owners(stack)
            == Counter({"w1": stack.partitions // 2, "w2": stack.partitions // 2})
        ),
        timeout=10,
        message="an even split of the leases",
    )
    send_tracks(stack, n, users)
    stack.set_clock("2025-10-04T10:02:00Z")
    stack.wait_metric("processed", n)
    stack.wait_idle()
    assert total_count(stack, users) == n
    for proc in (first, second):
        stack.kill(proc, signal.SIGTERM)
    summaries = {}
    for line in stack.logs().splitlines():
        if '"worker stopped"' in line:
            record = json.loads(line)
            summaries[record["worker"]] = record
    assert set(summaries) == {"w1", "w2"}
    assert summaries["w1"]["applied"] > 0 and summaries["w2"]["applied"] > 0
    assert summaries["w1"]["applied"] + summaries["w2"]["applied"] == n


def test_a_killed_workers_partitions_and_pending_entries_are_taken_over(stack: Stack) -> None:
    n, users = 200, 50
    stack.set_clock(T0)
    stack.start_api()
    survivor = stack.start_worker("w1")
    victim = stack.start_worker("w2")
    wait_until(
        lambda: (
            lease_owners(stack)
            == Counter({"w1": stack.partitions // 2, "w2": stack.partitions // 2})
        ),
        timeout=10,
        message="an even split of the leases",
    )
    send_tracks(stack, n, users)  # buffered: the watermark has not reached them
    wait_until(lambda: stack.pending() == n, message="every event read into a buffer")
    stack.kill(victim, signal.SIGKILL)
    wait_until(
        lambda: lease_owners(stack) == Counter({"w1": stack.partitions}),
        timeout=10,
        message="w1 to take over the dead worker's leases",
    )
    stack.set_clock("2025-10-04T10:02:00Z")
    stack.wait_metric("processed", n)
    stack.wait_idle()
    assert total_count(stack, users) == n
    assert stack.metric("dedup_hits") == 0
    assert survivor.poll() is None

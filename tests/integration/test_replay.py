"""Replay of dropped and parked events: ``cdp replay`` and ``POST /cdp/replay``.

Against the session's real redis-server, with the API and a worker process: events are
dropped by the worker for real (too late at arrival), replayed by the CLI (a process)
or the API, and applied by the worker; records are marked so nothing is replayed twice,
even by two replays racing each other.
"""

from __future__ import annotations

import asyncio
import json
import os
import pty
import select
import subprocess
import sys
from typing import Any

import pytest
from redis.asyncio import Redis

from cdp import keys
from cdp.replay import Report, replay
from cdp.settings import Settings
from tests.support.events import entry_events
from tests.support.stack import ROOT, Stack
from tests.support.values import PARTITIONS, ms
from tests.support.wait import wait_until

pytestmark = pytest.mark.integration

TOKEN = "replay-admin-token-0123456789"
ADMIN = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
T0 = "2025-10-04T12:00:00Z"
LONG_AGO = "2025-10-04T11:00:00Z"  # an hour before the clock: dropped at arrival


@pytest.fixture
def live(stack: Stack) -> Stack:
    stack.set_clock(T0)
    stack.start_api(admin_token=TOKEN, write_keys="wk")
    # Acknowledged entries stay an hour, so the tests can count what was published.
    stack.start_worker(stream_retention="1h")
    return stack


def cdp(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cdp", *args],
        env=stack.env(),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


def drop(stack: Stack, event_id: str, user: str, plan: str) -> None:
    """An IDENTIFY an hour late: the worker drops it into cdp:events:dropped."""
    before = stack.r.xlen(keys.DROPPED)
    stack.send(event_id, LONG_AGO, type="IDENTIFY", userId=user, traits={"plan": plan})
    wait_until(lambda: stack.r.xlen(keys.DROPPED) > before, message=f"{event_id} dropped")


def trait(stack: Stack, identifier: str, name: str) -> Any:
    resp = stack.request("GET", f"/cdp/profiles/{identifier}/traits", headers=ADMIN)
    if resp.status != 200:
        return None
    cell = resp.json()["traits"].get(name)
    return cell and cell["v"]


def imports_of(stack: Stack, event_id: str) -> int:
    """How many times ``event_id`` was published back as an import, over all partitions."""
    found = 0
    for p in range(PARTITIONS):
        for _, fields in stack.r.xrange(keys.stream(p)):
            for event in entry_events(fields):
                found += event["eventId"] == event_id and event.get("mode") == "import"
    return found


def last_generated_id(stack: Stack, partition: int) -> str | None:
    if not stack.r.exists(keys.stream(partition)):
        return None
    return str(stack.r.xinfo_stream(keys.stream(partition))["last-generated-id"])


def replay_api(stack: Stack, body: Any) -> Any:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return stack.request("POST", "/cdp/replay", raw, ADMIN)


def test_a_dropped_event_is_replayed_once_and_applied(live: Stack) -> None:
    drop(live, "late-1", "u1", "pro")
    assert trait(live, "user:u1", "plan") is None  # dropped, never applied

    done = cdp(live, "replay", "dropped")
    assert done.returncode == 0, done.stderr
    assert "replayed 1 of 1 records" in done.stderr, done.stderr
    assert "\r" not in done.stderr  # not a terminal: no progress bar, the counts only
    # An hour late again, yet applied: the replay is an import, never dropped as late.
    live.set_clock(ms(T0) + 10_000)
    wait_until(lambda: trait(live, "user:u1", "plan") == "pro", message="the replay applied")
    assert live.metric("replayed") == 1
    assert live.metric("dropped") == 1  # not dropped a second time
    assert imports_of(live, "late-1") == 1

    again = cdp(live, "replay", "dropped")
    assert again.returncode == 0, again.stderr
    assert "replayed 0 of 1 records" in again.stderr and "1 already replayed" in again.stderr
    assert imports_of(live, "late-1") == 1
    assert live.metric("replayed") == 1


def test_marks_of_before_the_per_partition_keys_still_count(live: Stack) -> None:
    """An upgrade: a record marked in the single marks key of before is not replayed
    again; the others are, and their marks go to their partition's key."""
    drop(live, "old-1", "u-old-1", "pro")
    drop(live, "old-2", "u-old-2", "pro")
    (first_id, _), _ = live.r.xrange(keys.DROPPED)
    live.r.zadd(keys.replayed_legacy("dropped"), {first_id: int(first_id.split("-")[0])})
    done = cdp(live, "replay", "dropped")
    assert "replayed 1 of 2 records" in done.stderr and "1 already replayed" in done.stderr
    assert (imports_of(live, "old-1"), imports_of(live, "old-2")) == (0, 1)
    assert sum(live.r.zcard(keys.replayed("dropped", p)) for p in range(PARTITIONS)) == 1
    assert live.r.zcard(keys.replayed_legacy("dropped")) == 1  # read, never written


def test_a_dry_run_lists_and_changes_nothing(live: Stack) -> None:
    drop(live, "late-2", "u2", "pro")
    # What was ever added to each partition (trimming shortens them, not this).
    streams = {p: last_generated_id(live, p) for p in range(16)}
    done = cdp(live, "replay", "dropped", "--dry-run")
    assert done.returncode == 0, done.stderr
    (line,) = done.stdout.splitlines()
    listed = json.loads(line)
    assert (listed["eventId"], listed["action"]) == ("late-2", "would replay")
    assert "grace" in listed["reason"] and isinstance(listed["partition"], int)
    assert "would replay 1 of 1" in done.stderr
    assert {p: last_generated_id(live, p) for p in range(16)} == streams
    assert imports_of(live, "late-2") == 0
    assert not any(live.r.exists(keys.replayed("dropped", p)) for p in range(PARTITIONS))
    assert live.metric("replayed") == 0
    # ... so the real run still has it to replay.
    assert "replayed 1 of 1" in cdp(live, "replay", "dropped").stderr


def test_event_ids_and_since_choose_the_records(live: Stack) -> None:
    for n in range(3):
        drop(live, f"pick-{n}", f"u-pick-{n}", "gold")
    done = cdp(live, "replay", "dropped", "--event-id", "pick-0", "--event-id", "pick-2")
    assert "replayed 2 of 2 records" in done.stderr, done.stderr
    assert (imports_of(live, "pick-0"), imports_of(live, "pick-1")) == (1, 0)
    assert imports_of(live, "pick-2") == 1
    # Records are stamped by Redis' clock: none is from the future, all from a day ago.
    later = cdp(live, "replay", "dropped", "--since", "2999-01-01T00:00:00Z", "--dry-run")
    assert later.stdout == "" and "would replay 0 of 0" in later.stderr
    rest = cdp(live, "replay", "dropped", "--since", "1d")
    assert "replayed 1 of 3 records" in rest.stderr and "2 already replayed" in rest.stderr
    assert imports_of(live, "pick-1") == 1
    bad = cdp(live, "replay", "dropped", "--since", "yesterday")
    assert bad.returncode == 2 and "since" in bad.stderr


def test_an_undecodable_record_is_skipped_with_its_reason(live: Stack) -> None:
    live.r.xadd(keys.DEAD, {"e": b"\xff{not json", "reason": "undecodable: x", "partition": 3})
    done = cdp(live, "replay", "dead")
    assert done.returncode == 0, done.stderr
    assert "skipped 1" in done.stderr and "cannot be replayed" in done.stderr, done.stderr
    assert live.metric("replayed") == 0


def test_replaying_what_was_applied_meanwhile_is_harmless(live: Stack) -> None:
    """A parked event that did get applied (say, by a retry): dedup absorbs the replay."""
    live.send("twice-1", T0, type="TRACK", userId="u3", name="Clicked")
    live.set_clock(ms(T0) + 10_000)
    live.wait_metric("processed", 1)
    (entry,) = [
        fields
        for p in range(16)
        for _, fields in live.r.xrange(keys.stream(p))
        if any(e["eventId"] == "twice-1" for e in entry_events(fields))
    ]
    live.r.xadd(keys.DEAD, {"e": entry["e"], "reason": "apply failed: test", "partition": 0})
    assert "replayed 1 of 1" in cdp(live, "replay", "dead").stderr
    live.wait_metric("dedup_hits", 1)
    counters = live.request("GET", "/cdp/profiles/user:u3", headers=ADMIN).json()["counters"]
    assert counters["Clicked"]["total"] == 1
    assert live.metric("processed") == 1


def drop_many(stack: Stack, n: int, prefix: str) -> list[str]:
    """``n`` TRACK calls an hour late, in one /v1 batch: all dropped by the worker."""
    ids = [f"{prefix}-{i}" for i in range(n)]
    calls = [
        {"type": "track", "userId": i, "event": "E", "messageId": i, "timestamp": LONG_AGO}
        for i in ids
    ]
    auth = {"Authorization": "Basic d2s6", "Content-Type": "application/json"}  # wk:
    for start in range(0, n, 2000):
        body = json.dumps({"batch": calls[start : start + 2000]}).encode()
        assert stack.request("POST", "/v1/batch", body, auth).status == 200
    wait_until(lambda: stack.r.xlen(keys.DROPPED) >= n, timeout=60, message=f"{n} dropped")
    return ids


def imports_per_event(stack: Stack) -> dict[str, int]:
    seen: dict[str, int] = {}
    for p in range(PARTITIONS):
        for _, fields in stack.r.xrange(keys.stream(p)):
            for event in entry_events(fields):
                if event.get("mode") == "import":
                    seen[event["eventId"]] = seen.get(event["eventId"], 0) + 1
    return seen


def test_two_replays_at_once_publish_each_record_once(live: Stack) -> None:
    """Both read the marks before either publishes (one event loop, interleaved at
    every await): the check in the script is what keeps each record to one replay."""
    ids = drop_many(live, 1200, "race")

    async def both() -> list[Report]:
        clients = [Redis.from_url(live.redis_url) for _ in range(2)]
        try:
            return list(await asyncio.gather(*(replay(c, Settings(), "dropped") for c in clients)))
        finally:
            for client in clients:
                await client.aclose()

    reports = asyncio.run(both())
    assert sum(r.replayed for r in reports) == 1200, [r.as_json() for r in reports]
    assert sum(r.already for r in reports) == 1200  # each saw the other's work as done
    assert imports_per_event(live) == {i: 1 for i in ids}
    assert live.metric("replayed") == 1200


def test_a_replay_killed_midway_then_run_again_replays_each_record_once(live: Stack) -> None:
    ids = drop_many(live, 6000, "kill")
    proc = subprocess.Popen(
        [sys.executable, "-m", "cdp", "replay", "dropped"],
        env=live.env(),
        cwd=ROOT,
        stderr=subprocess.DEVNULL,
    )
    wait_until(lambda: live.metric("replayed") > 0, timeout=60, interval=0.002, message="a start")
    proc.kill()
    proc.wait(timeout=10)
    killed_at = live.metric("replayed")
    assert killed_at < 6000, "the replay finished before the kill: make it longer"
    done = cdp(live, "replay", "dropped")
    assert f"replayed {6000 - killed_at} of 6000" in done.stderr, done.stderr
    assert imports_per_event(live) == {i: 1 for i in ids}
    assert sum(live.r.zcard(keys.replayed("dropped", p)) for p in range(PARTITIONS)) == 6000


def test_a_terminal_gets_a_progress_bar(live: Stack) -> None:
    drop(live, "bar-1", "u-bar", "pro")
    leader, follower = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "cdp", "replay", "dropped"],
        env=live.env(),
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=follower,
    )
    os.close(follower)
    seen = b""
    while True:
        ready, _, _ = select.select([leader], [], [], 30)
        if not ready:
            break
        try:
            chunk = os.read(leader, 4096)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        seen += chunk
    os.close(leader)
    assert proc.wait(timeout=30) == 0
    assert b"\r[" in seen and b"1/1 100%" in seen, seen
    assert b"replayed 1 of 1" in seen


def test_the_api_replays_and_refuses_bad_bodies(live: Stack) -> None:
    drop(live, "api-1", "u-api", "pro")
    dry = replay_api(live, {"source": "dropped", "dryRun": True})
    assert dry.status == 200, dry.body
    report = dry.json()
    assert (report["replayed"], report["selected"], report["dryRun"]) == (1, 1, True)
    assert report["records"][0]["action"] == "would replay"
    assert live.metric("replayed") == 0

    done = replay_api(live, {"source": "dropped", "since": "1h", "eventIds": ["api-1"]})
    assert done.status == 200, done.body
    assert done.json()["replayed"] == 1 and done.json()["records"][0]["action"] == "replayed"
    live.set_clock(ms(T0) + 10_000)
    wait_until(lambda: trait(live, "user:u-api", "plan") == "pro", message="the API's replay")
    again = replay_api(live, {"source": "dropped"}).json()
    assert (again["replayed"], again["alreadyReplayed"]) == (0, 1)

    for bad in (
        b"{not json",
        {},
        {"source": "nope"},
        {"source": "dropped", "since": "yesterday"},
        {"source": "dropped", "since": 5},
        {"source": "dropped", "eventIds": "api-1"},
        {"source": "dropped", "eventIds": [1]},
        {"source": "dropped", "dryRun": "yes"},
        {"source": "dropped", "extra": 1},
        ["dropped"],
    ):
        resp = replay_api(live, bad)
        assert resp.status == 400, (bad, resp.status, resp.body)
        assert resp.json()["status"] == "error"
    unauthorized = live.request("POST", "/cdp/replay", b'{"source": "dropped"}')
    assert unauthorized.status == 401


def test_a_replay_ends_at_the_newest_record_of_its_start(live: Stack) -> None:
    """A record parked again while a replay walks (an event that fails once more) is
    left for the next replay: the walk never chases the records it causes."""
    drop(live, "walk-1", "u-walk", "pro")
    ((_, fields),) = live.r.xrange(keys.DROPPED)

    def parked_again(read: int, total: int) -> None:
        live.r.xadd(keys.DROPPED, fields)

    async def run() -> Report:
        client = Redis.from_url(live.redis_url)
        try:
            return await replay(client, Settings(), "dropped", progress=parked_again)
        finally:
            await client.aclose()

    report = asyncio.run(run())
    assert (report.scanned, report.replayed) == (1, 1), report.as_json()
    assert live.r.xlen(keys.DROPPED) == 2

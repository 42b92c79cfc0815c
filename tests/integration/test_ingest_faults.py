"""Ingest, the live stream and process start-up under Redis faults, against real
redis-server, API, worker and ``cdp segments watch`` processes.

- A request's answer is its own: one request failing in Redis (a stream key of the
  wrong type, memory exhausted mid-load) fails no other request coalesced with it,
  a 2xx means every event of the request is stored and a 503 that none is, and
  ``accepted`` equals the number of events stored.
- While Redis hangs (SIGSTOP), every request is answered within about redis-timeout,
  not a multiple of it per queued batch: 504 (outcome unknown) for the round trip in
  flight, 503 (not stored) for those queued behind it, which indeed are never stored
  once Redis resumes; after SIGCONT ingest works.
- The live stream stays open when idle (heartbeats) and ends cleanly when Redis dies;
  ``cdp segments watch`` survives idleness.
- An API and a worker started before Redis wait for it and then work.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import http.client
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis as redis_sync
from redis.asyncio import Redis as AsyncRedis

from cdp import keys
from cdp.embedded import RedisServer, free_port
from cdp.events import iso_ms
from cdp.identity import partition_of
from tests.support.events import entry_events
from tests.support.metrics import total
from tests.support.stack import Stack
from tests.support.values import ADMIN_TOKEN as TOKEN
from tests.support.values import PARTITIONS, T0, WRITE_KEY, ms
from tests.support.wait import wait_until

pytestmark = pytest.mark.integration

AUTH = {"Authorization": "Basic " + base64.b64encode(f"{WRITE_KEY}:".encode()).decode()}
STREAM_PATH = "/cdp/segment-events/stream"


# -- a load client that records every request and its answer -------------------------


@dataclass
class Call:
    path: str
    payload: dict[str, Any]
    event_ids: list[str]
    status: int | None = None
    seconds: float = 0.0
    headers: dict[str, str] = field(default_factory=dict)


def ingest_call(event_id: str, user: str) -> Call:
    payload = {
        "eventId": event_id,
        "ts": iso_ms(int(time.time() * 1000)),
        "payload": {"type": "TRACK", "userId": user, "name": "Load"},
    }
    return Call("/cdp/ingest", payload, [event_id])


def batch_call(message_ids: list[str], users: list[str]) -> Call:
    now = iso_ms(int(time.time() * 1000))
    calls = [
        {"type": "track", "userId": u, "event": "Load", "messageId": m, "timestamp": now}
        for m, u in zip(message_ids, users, strict=True)
    ]
    return Call("/v1/batch", {"batch": calls}, list(message_ids), headers=AUTH)


async def send(session: aiohttp.ClientSession, port: int, call: Call) -> Call:
    """POST the call; ``seconds`` is from its request being sent to its answer (the
    time this client takes to open thousands of connections is not the server's)."""
    sent: list[float] = []
    async with session.post(
        f"http://127.0.0.1:{port}{call.path}",
        json=call.payload,
        headers=call.headers,
        trace_request_ctx={"sent": sent},
    ) as resp:
        await resp.read()
        call.status = resp.status
    call.seconds = time.monotonic() - sent[0]
    return call


async def _headers_sent(
    session: aiohttp.ClientSession, context: Any, params: aiohttp.TraceRequestHeadersSentParams
) -> None:
    context.trace_request_ctx["sent"].append(time.monotonic())


def session(timeout: float = 60) -> aiohttp.ClientSession:
    trace = aiohttp.TraceConfig()
    trace.on_request_headers_sent.append(_headers_sent)
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0),
        timeout=aiohttp.ClientTimeout(total=timeout),
        trace_configs=[trace],
    )


def send_all(port: int, calls: list[Call]) -> list[Call]:
    async def run() -> list[Call]:
        async with session() as client:
            return list(await asyncio.gather(*(send(client, port, c) for c in calls)))

    return asyncio.run(run())


def stored_event_ids(r: redis_sync.Redis) -> list[str]:
    """eventId of every entry of every partition stream (duplicates kept)."""
    found = []
    for p in range(PARTITIONS):
        if r.type(keys.stream(p)) != "stream":
            continue
        for _, fields in r.xrange(keys.stream(p)):
            found += [event["eventId"] for event in entry_events(fields)]
    return found


def assert_answers_match_what_is_stored(calls: list[Call], r: redis_sync.Redis) -> None:
    stored = stored_event_ids(r)
    assert len(stored) == len(set(stored)), "an event was stored twice"
    stored_set = set(stored)
    for call in calls:
        kept = [e in stored_set for e in call.event_ids]
        if call.status in (200, 202):
            assert all(kept), f"{call.path} answered {call.status} but not all is stored"
        else:
            assert call.status == 503, (call.path, call.status)
            assert not any(kept), f"{call.path} answered 503 but stored {sum(kept)} events"
    accepted = total(r, "accepted")
    assert accepted == len(stored), f"accepted={accepted}, stored={len(stored)}"


# -- 4: one failing request fails no other -------------------------------------------


def test_a_request_failing_in_redis_fails_no_other_request_of_its_pipeline(
    stack: Stack,
) -> None:
    stack.start_api(write_keys=WRITE_KEY, clock="system")
    users = [f"u{i}" for i in range(400)]
    broken = partition_of(f"user:{users[0]}", stack.partitions)
    stack.r.set(keys.stream(broken), "not a stream")  # every XADD there is refused

    calls = [ingest_call(f"e-{i}", u) for i, u in enumerate(users)]
    # Batches spanning partitions, some with an event for the broken one.
    calls += [
        batch_call([f"b{i}-{j}" for j in range(8)], users[i * 8 : i * 8 + 8]) for i in range(40)
    ]
    send_all(stack.api_port or 0, calls)

    stack.r.delete(keys.stream(broken))
    for call in calls:
        on_broken = any(
            partition_of(f"user:{u}", stack.partitions) == broken for u in call_users(call)
        )
        ok = 202 if call.path == "/cdp/ingest" else 200
        assert call.status == (503 if on_broken else ok), (call.path, call.status, on_broken)
    assert_answers_match_what_is_stored(calls, stack.r)


def call_users(call: Call) -> list[str]:
    if call.path == "/cdp/ingest":
        return [call.payload["payload"]["userId"]]
    return [c["userId"] for c in call.payload["batch"]]


# -- 13: out of memory mid-load ------------------------------------------------------


def test_under_oom_each_answer_matches_its_own_events_and_accepted_is_exact(
    stack: Stack, redis_url: str
) -> None:
    stack.start_api(write_keys=WRITE_KEY, clock="system")
    port = stack.api_port or 0
    calls: list[Call] = []

    async def load() -> None:
        admin = AsyncRedis.from_url(redis_url)
        await admin.config_set("maxmemory-policy", "noeviction")
        oom_since: float | None = None
        counter = iter(range(10**9))

        def done() -> bool:  # a while under OOM, and plenty refused
            refused = sum(c.status == 503 for c in calls)
            return oom_since is not None and time.monotonic() - oom_since > 1 and refused > 50

        async def client(n: int) -> None:
            nonlocal oom_since
            async with session() as http_client:
                while not done():
                    i = next(counter)
                    if i % 3:
                        ids = [f"b{i}-{j}" for j in range(10)]
                        call = batch_call(ids, [f"u{i % 97}-{j}" for j in range(10)])
                    else:
                        call = ingest_call(f"e{i}", f"u{i % 89}")
                    calls.append(await send(http_client, port, call))
                    if oom_since is None and len(calls) >= 300:
                        oom_since = time.monotonic()
                        used = int((await admin.info("memory"))["used_memory"])
                        await admin.config_set("maxmemory", used + 256 * 1024)

        try:
            await asyncio.wait_for(asyncio.gather(*(client(n) for n in range(24))), 60)
        finally:
            await admin.config_set("maxmemory", 0)
            await admin.aclose()

    asyncio.run(load())
    statuses = {c.status for c in calls}
    assert 503 in statuses and (200 in statuses or 202 in statuses), statuses
    assert statuses <= {200, 202, 503}, statuses
    assert_answers_match_what_is_stored(calls, stack.r)


# -- 12: a hung Redis ----------------------------------------------------------------


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of this test alone, to stop, kill or start late."""
    server = RedisServer(tmp_path / "own-redis", appendonly=False).start()
    yield server
    if server.process is not None and server.process.poll() is None:
        os.kill(server.process.pid, signal.SIGCONT)
    server.stop()


@pytest.fixture
def own_stack(own_redis: RedisServer, tmp_path: Path) -> Iterator[Stack]:
    client = redis_sync.Redis.from_url(own_redis.url, decode_responses=True)
    stack = Stack(own_redis.url, client, tmp_path)
    yield stack
    stack.close()
    client.close()


def test_while_redis_hangs_every_request_is_answered_within_the_redis_timeout(
    own_stack: Stack, own_redis: RedisServer
) -> None:
    own_stack.start_api(clock="system", redis_timeout="2s")
    assert own_redis.process is not None
    os.kill(own_redis.process.pid, signal.SIGSTOP)
    try:
        calls = send_all(
            own_stack.api_port or 0, [ingest_call(f"h-{i}", f"u{i}") for i in range(2000)]
        )
    finally:
        os.kill(own_redis.process.pid, signal.SIGCONT)
    statuses = [c.status for c in calls]
    assert set(statuses) == {503, 504}, set(statuses)
    # Only the round trip in flight when Redis stopped may have been executed.
    assert statuses.count(504) <= 500, statuses.count(504)
    slowest = max(c.seconds for c in calls)
    # One redis-timeout (2 s) and a wide margin for a busy shared machine (5.3 s was
    # seen with the suite running beside other work). What this tells apart: one
    # timeout per round trip of 500 queued requests would keep the last ones 8 s
    # (4 x 2 s; 4 x 5 s with the old code).
    assert slowest < 7, f"the slowest 503 took {slowest:.1f}s"

    def accepted() -> bool:
        return own_stack.post("/cdp/ingest", ingest_call("after", "u1").payload).status == 202

    wait_until(accepted, timeout=20, message="ingest to work again after SIGCONT")
    # Redis ran what it had read before the stop: a 504 may be stored, a 503 never.
    stored = set(stored_event_ids(own_stack.r))
    refused = [c for c in calls if c.status == 503 and set(c.event_ids) & stored]
    assert not refused, f"{len(refused)} requests answered 503 were stored"


# -- 11: the live stream and `cdp segments watch` ----------------------------------------


class LiveStream:
    """GET /cdp/segment-events/stream with http.client: it decodes the chunked body
    and raises IncompleteRead when the server breaks the framing."""

    def __init__(self, port: int) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
        self.conn.request("GET", STREAM_PATH, headers={"Authorization": f"Bearer {TOKEN}"})
        self.resp = self.conn.getresponse()
        assert self.resp.status == 200
        self.lines: list[str] = []

    def read_line(self) -> str | None:
        """The next line, or None at the proper end of the response."""
        raw = self.resp.readline()
        if not raw:
            return None
        line = raw.decode().rstrip("\n")
        self.lines.append(line)
        return line

    def close(self) -> None:
        self.conn.close()


def add_segment_event(r: redis_sync.Redis, event_id: str) -> None:
    event = {"eventId": event_id, "segment": "s1", "type": "ENTER", "canonicalId": "p1"}
    r.xadd(keys.SEGMENT_EVENTS, {"e": json.dumps(event), "segment": "s1"})


def test_an_idle_live_stream_stays_open_with_heartbeats(stack: Stack) -> None:
    stack.start_api(admin_token=TOKEN, stream_heartbeat="300ms", redis_timeout="1s")
    stream = LiveStream(stack.api_port or 0)
    try:
        assert stream.read_line() == ": connected"
        started = time.monotonic()
        # Idle for longer than redis-timeout and redis-py's 5 s default socket timeout.
        while time.monotonic() - started < 6.5:
            assert stream.read_line() is not None, "the stream ended while idle"
        heartbeats = stream.lines.count(": keep-alive")
        assert heartbeats >= 10, stream.lines

        add_segment_event(stack.r, "after-idle")
        deadline = time.monotonic() + 10
        while not any("after-idle" in line for line in stream.lines):
            assert time.monotonic() < deadline, stream.lines[-5:]
            assert stream.read_line() is not None
    finally:
        stream.close()


def test_the_live_stream_ends_cleanly_when_redis_dies(
    own_stack: Stack, own_redis: RedisServer
) -> None:
    own_stack.start_api(admin_token=TOKEN, stream_heartbeat="300ms", redis_timeout="1s")
    stream = LiveStream(own_stack.api_port or 0)
    try:
        assert stream.read_line() == ": connected"
        assert own_redis.process is not None
        own_redis.process.kill()
        own_redis.process.wait()
        # Read to the end: http.client raises IncompleteRead on a broken chunked body.
        deadline = time.monotonic() + 30
        while stream.read_line() is not None:
            assert time.monotonic() < deadline, "the stream did not end"
        assert any("unavailable" in line for line in stream.lines if line.startswith(":"))
        assert own_stack.get("/healthz").status == 200
    finally:
        stream.close()


def test_segments_watch_survives_idleness(stack: Stack) -> None:
    env = stack.env(stream_heartbeat="300ms", redis_timeout="1s")
    watch = stack._spawn(["segments", "watch"], env)
    (output,) = stack.log_dir.glob("*-segments.log")

    def tailing() -> bool:
        return any(c.get("cmd") == "xread" for c in stack.r.client_list())

    wait_until(tailing, timeout=30, message="watch to block in XREAD")
    # Alive past redis-timeout and redis-py's 5 s default socket timeout.
    with pytest.raises(subprocess.TimeoutExpired):
        watch.wait(timeout=6.5)
    add_segment_event(stack.r, "seen-by-watch")
    wait_until(lambda: "seen-by-watch" in output.read_text(), message="watch to print it")


# -- 15: start order -------------------------------------------------------------------


def test_api_and_worker_started_before_redis_wait_for_it_and_then_work(
    tmp_path: Path, r: redis_sync.Redis
) -> None:
    redis_port = free_port()
    url = f"redis://127.0.0.1:{redis_port}/0"
    late = RedisServer(tmp_path / "late-redis", redis_port, appendonly=False)
    client = redis_sync.Redis.from_url(url, decode_responses=True)
    stack = Stack(url, client, tmp_path)
    try:
        stack.api_port = free_port()
        api = stack._spawn(["api", "--port", str(stack.api_port)], stack.env())
        worker = stack.start_worker()
        api_log, worker_log = sorted(tmp_path.glob("*.log"))

        def waiting(log: Path) -> bool:
            return log.read_text().count("waiting for redis") >= 3

        wait_until(lambda: waiting(api_log) and waiting(worker_log), timeout=30, message="retries")
        assert api.poll() is None and worker.poll() is None
        assert stack.get("/healthz").status == 200
        assert stack.get("/readyz").status == 503

        late.start()
        wait_until(stack._ready, timeout=30, message="/readyz once Redis is up")
        stack.set_clock(T0)
        stack.send("late-1", T0, type="TRACK", userId="late-user", name="Started")
        stack.set_clock(ms(T0) + 60_000)
        stack.wait_metric("processed", 1, timeout=30)
        assert client.exists(keys.identifier("user:late-user"))
    finally:
        stack.close()
        client.close()
        with contextlib.suppress(Exception):
            late.stop()

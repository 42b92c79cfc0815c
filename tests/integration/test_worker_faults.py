"""Faults in the worker's path, injected into a real redis-server: nothing accepted is
left pending, nothing good is parked, and the buffer stays within its bound.

- entries read under the worker's own name whose reply never arrived (a connection cut
  after Redis executed XREADGROUP), entries whose drop record failed (OOM), and a tick
  whose round trip failed (Redis stopped) are all applied, parked or dropped later,
  without a restart;
- OOM and READONLY inside the apply script are Redis's condition, not the event's: the
  batch is retried and applied once memory is back; only CDP_POISON parks an event;
- one read over many partitions never overfills the buffer (COUNT is per stream).

Faults that would disturb other tests (maxmemory, SIGSTOP, REPLICAOF) run on a
redis-server of the test's own.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from pathlib import Path
from typing import Any

import pytest
import redis as redis_sync
import structlog
from redis.asyncio import Redis
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from redis.retry import Retry

from cdp import keys
from cdp.clock import RedisClock
from cdp.embedded import RedisServer, free_port
from cdp.events import StreamEvent, stream_encoder
from cdp.identity import partition_of
from cdp.pipeline.apply import ApplyContext, queue_apply
from cdp.scripts import Scripts, is_poison
from cdp.settings import Settings
from tests.support.inprocess import running
from tests.support.inprocess import worker_settings as settings
from tests.support.metrics import total_async
from tests.support.stack import Stack
from tests.support.values import PARTITIONS
from tests.support.values import T0_MS as T0
from tests.support.wait import wait_until
from workers.housekeeping import ensure_groups
from workers.worker import Worker

pytestmark = pytest.mark.integration


class ManualClock:
    """A clock the test moves; unlike RedisClock it answers while Redis does not."""

    def __init__(self, now_ms: int) -> None:
        self.now = now_ms

    async def now_ms(self) -> int:
        return self.now


async def wait_for(predicate: Callable[[], Awaitable[bool]], timeout: float = 15.0) -> None:
    async with asyncio.timeout(timeout):
        while not await predicate():
            await asyncio.sleep(0.01)


def event(
    event_id: str, user: str, ts: int, received_at: int | None = None, **fields: Any
) -> StreamEvent:
    fields.setdefault("type", "TRACK")
    if fields["type"] == "TRACK":
        fields.setdefault("name", "Clicked")
    return StreamEvent(
        eventId=event_id,
        ts=ts,
        receivedAt=ts if received_at is None else received_at,
        userId=user,
        **fields,
    )


def user_in(partition: int, prefix: str = "u") -> str:
    """A userId that routes to ``partition``."""
    return next(
        f"{prefix}{i}"
        for i in range(10_000)
        if partition_of(f"user:{prefix}{i}", PARTITIONS) == partition
    )


async def publish(redis: Redis, *events: StreamEvent) -> None:
    async with redis.pipeline(transaction=False) as pipe:
        for ev in events:
            pipe.xadd(
                keys.stream(partition_of(f"user:{ev.userId}", PARTITIONS)),
                {"e": stream_encoder.encode(ev)},
            )
        await pipe.execute()


async def pending(redis: Redis, partition: int | None = None) -> int:
    parts = range(PARTITIONS) if partition is None else [partition]
    total = 0
    for p in parts:
        with contextlib.suppress(RedisError):
            total += int((await redis.xpending(keys.stream(p), keys.GROUP))["pending"])
    return total


async def processed(redis: Redis) -> int:
    return await total_async(redis, "processed")


async def owns_everything(worker: Worker) -> bool:
    return worker.owned == set(range(PARTITIONS))


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server for this test alone: it may be stopped, starved or made a replica."""
    server = RedisServer(tmp_path / "own-redis", appendonly=False).start()
    yield server
    assert server.process is not None
    with contextlib.suppress(ProcessLookupError):
        os.kill(server.process.pid, signal.SIGCONT)
    server.stop()


# -- 1. own pending entries --------------------------------------------------------


def test_entries_read_under_the_workers_name_but_never_buffered_are_applied(redis_url: str) -> None:
    """The reply of an XREADGROUP is lost: the entries are pending for the worker itself."""

    async def scenario() -> None:
        async with Redis.from_url(redis_url) as redis:
            await redis.set(keys.CLOCK, T0 + 60_000)
            s = settings(redis_url)
            await ensure_groups(redis, s.partitions)
            async with running(Worker(redis, s, RedisClock(redis), "w")) as worker:
                await wait_for(lambda: owns_everything(worker))
                user = "lost-reply"
                stream = keys.stream(partition_of(f"user:{user}", PARTITIONS))
                # XADD and the read in one transaction, so that the worker's own blocked
                # read cannot take them first: Redis executed the read, the reply is gone.
                async with redis.pipeline(transaction=True) as pipe:
                    for i in range(5):
                        pipe.xadd(
                            stream, {"e": stream_encoder.encode(event(f"lost-{i}", user, T0 + i))}
                        )
                    pipe.xreadgroup(keys.GROUP, "w", {stream: ">"}, count=100)
                    *_, read = await pipe.execute()
                assert len(read[0][1]) == 5
                started = time.monotonic()
                # Bounded: idle for lease-ttl, noticed within a lease interval, applied next tick.
                await wait_for(
                    lambda: _eq(processed(redis), 5), timeout=2 * s.lease_ttl_ms / 1000 + 3
                )
                assert time.monotonic() - started >= s.lease_ttl_ms / 1000 * 0.9  # idle first
                await wait_for(lambda: _eq(pending(redis), 0))

    asyncio.run(scenario())


async def _eq(awaitable: Awaitable[object], expected: object) -> bool:
    return await awaitable == expected


def test_reclaiming_skips_what_the_worker_holds_and_takes_only_what_it_lost(
    redis_url: str,
) -> None:
    async def scenario() -> None:
        async with Redis.from_url(redis_url) as redis:
            s = settings(redis_url, lease_ttl_ms=200)
            now = T0
            await ensure_groups(redis, s.partitions)
            worker = Worker(redis, s, ManualClock(now), "w")
            await worker.rebalance()
            user = "holder"
            partition = partition_of(f"user:{user}", PARTITIONS)
            stream = keys.stream(partition)
            # Three events an hour ahead wait in the buffer, idle far longer than lease-ttl.
            await publish(redis, *(event(f"held-{i}", user, now + 3_600_000 + i) for i in range(3)))
            reply = await redis.xreadgroup(keys.GROUP, "w", {stream: ">"}, count=10)
            await worker.reader.ingest(partition, reply[0][1])
            # Two more read under the worker's name, the reply lost.
            await publish(redis, *(event(f"lost-{i}", user, now + 3_600_000 + i) for i in range(2)))
            await redis.xreadgroup(keys.GROUP, "w", {stream: ">"}, count=10)
            # Taken up once idle for lease-ttl (the calls before that claim nothing).
            await wait_for(lambda: _eq(worker.reclaim_pending(), 2), timeout=5)
            assert worker.buffered == 5
            # One more lost: the five held ones, idle too, are listed but skipped.
            await publish(redis, event("lost-2", user, now + 3_600_000 + 2))
            await redis.xreadgroup(keys.GROUP, "w", {stream: ">"}, count=10)
            await wait_for(lambda: _eq(worker.reclaim_pending(), 1), timeout=5)
            assert worker.buffered == 6
            assert await pending(redis, partition) == 6

    asyncio.run(scenario())


class CuttingProxy:
    """A TCP proxy to Redis that, once armed, cuts the connection carrying the first
    reply that contains ``marker`` instead of passing that reply on: Redis executed
    the command, the client never hears of it."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self.marker: bytes | None = None
        self.cut = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", self.port))
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def arm(self, marker: bytes) -> None:
        self.marker = marker

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            with self._lock:
                self._sockets += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, True), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, replies: bool) -> None:
        try:
            while data := source.recv(65536):
                marker = self.marker
                if replies and marker is not None and marker in data:
                    self.marker = None
                    self.cut.set()
                    break
                sink.sendall(data)
        except OSError:
            pass
        for sock in (source, sink):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def close(self) -> None:
        self._listener.close()
        with self._lock:
            for sock in self._sockets:
                with contextlib.suppress(OSError):
                    sock.close()


def test_a_read_reply_lost_with_the_connection_is_applied_by_the_running_worker(
    stack: Stack, redis_server: RedisServer
) -> None:
    """A real worker process; its connection is cut right after Redis executed its
    XREADGROUP, so the entries are pending under its name and in nobody's buffer."""
    proxy = CuttingProxy(redis_server.port)
    try:
        stack.set_clock(T0 + 60_000)
        stack.start_worker("w1", redis_url=proxy.url)
        wait_until(
            lambda: all(stack.r.get(keys.lease(p)) == "w1" for p in range(PARTITIONS)),
            timeout=20,
            message="w1 to hold every partition",
        )
        proxy.arm(b"cut-0")
        user = "cut-user"
        stream = keys.stream(partition_of(f"user:{user}", PARTITIONS))
        for i in range(3):
            stack.r.xadd(stream, {"e": stream_encoder.encode(event(f"cut-{i}", user, T0 + i))})
        wait_until(proxy.cut.is_set, timeout=10, message="the read reply to be cut")
        # Every event is applied within about twice lease-ttl (1 s here), no restart.
        stack.wait_metric("processed", 3, timeout=2 * 1 + 8)
        stack.wait_idle()
        assert stack.processes[0].poll() is None
    finally:
        proxy.close()


def test_a_failed_drop_record_loses_neither_the_other_streams_nor_itself(
    own_redis: RedisServer,
) -> None:
    """Under OOM the XADD to cdp:events:dropped is refused while reading one multi-stream
    reply: the later streams are still buffered, and the dropped entry is recorded later."""

    async def scenario() -> None:
        async with Redis.from_url(own_redis.url) as redis:
            s = settings(own_redis.url)
            now = T0 + 3_600_000
            await ensure_groups(redis, s.partitions)
            worker = Worker(redis, s, ManualClock(now), "w")
            await worker.rebalance()
            late, good = user_in(2, "late"), user_in(9, "good")
            too_old = now - s.window_size_ms - s.grace_period_ms - 60_000
            await publish(
                redis,
                event("dropped-0", late, too_old, received_at=now),
                event("good-0", good, now - 10_000, received_at=now),
                event("good-1", good, now - 9_000, received_at=now),
            )
            await redis.config_set("maxmemory-policy", "noeviction")
            await redis.config_set("maxmemory", 1)
            reader = asyncio.create_task(worker.reader.run())
            try:
                # One read returns both streams; recording the drop fails (OOM).
                await wait_for(lambda: _eq(pending(redis), 3))
                await wait_for(lambda: _true(worker.buffered == 2), timeout=5)
            finally:
                await redis.config_set("maxmemory", 0)
                worker.stop()
                reader.cancel()
                await asyncio.gather(reader, return_exceptions=True)
            assert await redis.xlen(keys.DROPPED) == 0
            await worker.rebalance()  # renews the leases (no lease loop runs here)
            assert await worker.tick() == 2
            await wait_for(
                lambda: _positive(worker.reclaim_pending()), timeout=2 * s.lease_ttl_ms / 1000 + 3
            )
            assert await redis.xlen(keys.DROPPED) == 1
            assert await pending(redis) == 0

    asyncio.run(scenario())


async def _true(value: bool) -> bool:
    return value


async def _positive(awaitable: Awaitable[int]) -> bool:
    return await awaitable > 0


def test_a_tick_whose_round_trip_failed_requeues_every_chunk_it_popped(
    own_redis: RedisServer,
) -> None:
    """Redis stops answering during the tick's round trip: the good chunk and the one
    that could not be encoded both go back to the buffer; the next tick settles both."""

    async def scenario() -> None:
        assert own_redis.process is not None
        async with Redis.from_url(
            own_redis.url, socket_timeout=0.5, retry=Retry(NoBackoff(), 0)
        ) as redis:
            s = settings(own_redis.url, batch_size=1)
            now = T0 + 60_000
            await ensure_groups(redis, s.partitions)
            worker = Worker(redis, s, ManualClock(now), "w")
            await worker.rebalance()
            user = "stopped"
            # Year 0 in UTC: the API refuses it, but an older one may have stored it.
            unencodable = event("year-0", user, -62_135_650_000_000, received_at=now, mode="import")
            await publish(redis, event("fine", user, T0), unencodable)
            stream = keys.stream(partition_of(f"user:{user}", PARTITIONS))
            reply = await redis.xreadgroup(keys.GROUP, "w", {stream: ">"}, count=10)
            partition = partition_of(f"user:{user}", PARTITIONS)
            await worker.reader.ingest(partition, reply[0][1])
            assert worker.buffered == 2
            os.kill(own_redis.process.pid, signal.SIGSTOP)
            try:
                with pytest.raises(RedisError):
                    await worker.tick()
            finally:
                os.kill(own_redis.process.pid, signal.SIGCONT)
            assert worker.buffered == 2
            await worker.tick()
            assert worker.buffered == 0
            dead = await redis.xrange(keys.DEAD)
            assert [fields[b"entryId"] for _, fields in dead] == [reply[0][1][1][0]]
            assert b"cannot encode" in dead[0][1][b"reason"]
            assert await processed(redis) == 1
            assert await pending(redis) == 0

    asyncio.run(scenario())


def test_a_worker_starting_while_redis_does_not_answer_waits_for_it(
    own_redis: RedisServer,
) -> None:
    """The start (consumer groups, scripts) retries a Redis error: a worker started
    while a cluster fails a master over waited for nothing before and exited (code 2)."""
    assert own_redis.process is not None

    async def scenario() -> None:
        client = Redis.from_url(own_redis.url, socket_timeout=0.2, retry=Retry(NoBackoff(), 0))
        async with client as redis:
            worker = Worker(redis, settings(own_redis.url), ManualClock(T0), "w")
            os.kill(own_redis.process.pid, signal.SIGSTOP)
            with structlog.testing.capture_logs() as logs:
                try:
                    start = asyncio.create_task(worker.prepare())
                    await wait_for(
                        lambda: _true(any(e["event"] == "start: redis error" for e in logs))
                    )
                    assert not start.done()
                finally:
                    os.kill(own_redis.process.pid, signal.SIGCONT)
                assert await asyncio.wait_for(start, 15) is True
            groups = await redis.xinfo_groups(keys.stream(0))
            assert [g["name"] for g in groups] == [keys.GROUP.encode()]

    asyncio.run(scenario())


async def _true(value: bool) -> bool:
    return value


# -- 2. OOM and READONLY are not poison -----------------------------------------------


async def _add(redis: Redis, *events: StreamEvent) -> list[tuple[str, StreamEvent]]:
    """XADD the events (one user's, so one partition) and return (entry id, event)."""
    stream = keys.stream(partition_of(f"user:{events[0].userId}", PARTITIONS))
    ids = [await redis.xadd(stream, {"e": stream_encoder.encode(ev)}) for ev in events]
    return [(i.decode(), ev) for i, ev in zip(ids, events, strict=True)]


async def _apply_reply(
    redis: Redis, s: Settings, now: int, entries: list[tuple[str, StreamEvent]]
) -> Any:
    """The raw reply of one apply_batch call (no lease check) for these entries."""
    partition = partition_of(f"user:{entries[0][1].userId}", PARTITIONS)
    async with redis.pipeline(transaction=False) as pipe:
        await queue_apply(pipe, Scripts(redis), s, ApplyContext(now, ""), partition, entries)
        (reply,) = await pipe.execute(raise_on_error=False)
    return reply


def test_oom_and_readonly_inside_the_script_are_not_poison_but_poison_is(
    own_redis: RedisServer,
) -> None:
    async def scenario() -> None:
        async with Redis.from_url(own_redis.url) as redis:
            s = settings(own_redis.url)
            await ensure_groups(redis, s.partitions)
            now = T0 + 60_000
            entries = await _add(redis, event("oom-0", "oom", T0))
            await redis.config_set("maxmemory-policy", "noeviction")
            await redis.config_set("maxmemory", 1)
            try:
                oom = await _apply_reply(redis, s, now, entries)
            finally:
                await redis.config_set("maxmemory", 0)
            assert isinstance(oom, RedisError) and "OOM" in str(oom), oom
            assert not is_poison(oom)
            # Nothing applied, nothing recorded: no profile, no seen ids.
            assert await redis.get(keys.identifier("user:oom")) is None
            assert [k async for k in redis.scan_iter(match=keys.SEEN_PATTERN)] == []

            # A replica refuses writes: READONLY from inside the script.
            entries = await _add(redis, event("ro-0", "ro", T0))
            await redis.execute_command("REPLICAOF", "127.0.0.1", free_port())
            try:
                readonly = await _apply_reply(redis, s, now, entries)
            finally:
                await redis.execute_command("REPLICAOF", "NO", "ONE")
            assert isinstance(readonly, RedisError) and "READONLY" in str(readonly), readonly
            assert not is_poison(readonly)

            # A stored trait cell that is not JSON: the event that meets it is refused.
            identify = {"type": "IDENTIFY"}
            entries = await _add(
                redis, event("p-0", "poisoned", T0, traits={"plan": "a"}, **identify)
            )
            assert (await _apply_reply(redis, s, now, entries))[1] == 1
            cid = (await redis.get(keys.identifier("user:poisoned"))).decode()
            await redis.hset(keys.traits(cid), "plan", "{not json")
            entries = await _add(
                redis, event("p-1", "poisoned", T0 + 1, traits={"plan": "b"}, **identify)
            )
            refused = await _apply_reply(redis, s, now, entries)
            assert is_poison(refused), refused
            assert str(refused).startswith("CDP_POISON event p-1: ")

    asyncio.run(scenario())


class GiveMemoryBack:
    """structlog processor: gives Redis its memory back at the worker's second reaction
    to a failed apply (the moment at which a worker that took OOM for poison parks)."""

    REACTIONS = {
        "apply refused by redis; retried next tick",
        "apply failed, retrying event by event",
        "event parked in dead-letter stream",
    }

    def __init__(self, url: str) -> None:
        self.url = url
        self.seen: list[str] = []

    def __call__(self, logger: Any, method: str, event_dict: MutableMapping[str, Any]) -> Any:
        if event_dict.get("event") in self.REACTIONS:
            self.seen.append(event_dict["event"])
            if len(self.seen) == 2:
                with redis_sync.Redis.from_url(self.url) as client:
                    client.config_set("maxmemory", 0)
        raise structlog.DropEvent


def test_events_refused_for_oom_are_applied_once_memory_is_back_not_parked(
    own_redis: RedisServer,
) -> None:
    async def scenario() -> None:
        async with Redis.from_url(own_redis.url) as redis:
            s = settings(own_redis.url, lease_ttl_ms=30_000)
            await ensure_groups(redis, s.partitions)
            clock = ManualClock(T0)
            hook = GiveMemoryBack(own_redis.url)
            worker = Worker(redis, s, clock, "w")
            # The worker's log goes through the hook (whatever structlog's global set-up).
            worker.state.log = structlog.wrap_logger(structlog.PrintLogger(), processors=[hook])
            try:
                async with running(worker):
                    await wait_for(lambda: owns_everything(worker))
                    await publish(
                        redis, *(event(f"m-{i}", f"mem{i}", T0 + 1_000 + i) for i in range(3))
                    )
                    await wait_for(lambda: _true(worker.buffered == 3))
                    await redis.config_set("maxmemory-policy", "noeviction")
                    await redis.config_set("maxmemory", 1)
                    clock.now = T0 + 60_000  # the events are ready: applied under OOM
                    await wait_for(lambda: _eq(processed(redis), 3))
                    await wait_for(lambda: _eq(pending(redis), 0))
            finally:
                await redis.config_set("maxmemory", 0)
            assert await redis.xlen(keys.DEAD) == 0, hook.seen
            # The apply met the OOM twice, and both times the batch waited for the next tick.
            assert hook.seen[:2] == ["apply refused by redis; retried next tick"] * 2, hook.seen

    asyncio.run(scenario())


@pytest.mark.parametrize("protocol", ["batch", "profile"])
def test_only_the_event_at_fault_is_parked_and_a_broken_shared_key_parks_nothing(
    redis_url: str, protocol: str
) -> None:
    """With either apply protocol (``apply-protocol``): the profile protocol's scripts
    refuse the same event, and the worker parks it the same way."""

    async def scenario() -> None:
        async with Redis.from_url(redis_url) as redis:
            s = settings(redis_url, apply_protocol=protocol)
            now = T0 + 60_000
            await ensure_groups(redis, s.partitions)
            worker = Worker(redis, s, ManualClock(now), "w")
            await worker.rebalance()
            # The counter of "Broken" events of this profile is a string: WRONGTYPE on a
            # key that only its "Broken" events name.
            await publish(redis, event("bad-0", "bad", T0))
            await _read_all(redis, worker)
            assert await worker.tick() == 1
            cid = (await redis.get(keys.identifier("user:bad"))).decode()
            await redis.set(keys.counter(cid, "Broken"), "oops")
            await publish(
                redis,
                event("good-a", "bad", T0 + 10),
                event("bad-1", "bad", T0 + 20, name="Broken"),
                event("good-b", "bad", T0 + 30),
            )
            await _read_all(redis, worker)
            await worker.tick()
            # good-a was applied by the batch call that bad-1 stopped; good-b event by event.
            assert await processed(redis) == 3
            assert await redis.zscore(keys.counter(cid, "Clicked"), f"{T0 - T0 % 60_000:013d}") == 3
            dead = await redis.xrange(keys.DEAD)
            assert len(dead) == 1 and b"CDP_POISON event bad-1" in dead[0][1][b"reason"], dead
            assert await pending(redis) == 0

            # A shared key of the wrong type would fail every event: nothing is parked,
            # the events wait in the buffer until it is repaired.
            await redis.delete(keys.PROFILE_SEQ)
            await redis.hset(keys.PROFILE_SEQ, "oops", 1)
            await publish(
                redis, event("wait-0", "other", T0 + 40), event("wait-1", "other", T0 + 50)
            )
            await _read_all(redis, worker)
            assert await worker.tick() == 0
            assert worker.buffered == 2
            assert await redis.xlen(keys.DEAD) == 1
            await redis.delete(keys.PROFILE_SEQ)
            await redis.set(keys.PROFILE_SEQ, 100)
            assert await worker.tick() == 2
            assert await pending(redis) == 0

    asyncio.run(scenario())


async def _read_all(redis: Redis, worker: Worker) -> None:
    streams = {keys.stream(p): ">" for p in sorted(worker.owned)}
    for stream, entries in await redis.xreadgroup(
        keys.GROUP, worker.worker_id, streams, count=1000
    ):
        partition = int(stream.decode().rsplit("{p", 1)[1].rstrip("}"))
        await worker.reader.ingest(partition, entries)


# -- 5. backpressure over many partitions ----------------------------------------------


def test_one_read_over_sixteen_partitions_stays_within_max_buffer(redis_url: str) -> None:
    async def scenario() -> None:
        async with Redis.from_url(redis_url) as redis:
            await redis.set(keys.CLOCK, T0)
            s = settings(redis_url, max_buffer=50, read_count=20)
            await ensure_groups(redis, s.partitions)
            users = [user_in(p, "bp") for p in range(PARTITIONS)]
            # 30 events per partition, a minute ahead: nothing ready, all would fit PARTITIONS x 20.
            await publish(
                redis, *(event(f"{u}-{i}", u, T0 + 60_000 + i) for u in users for i in range(30))
            )
            async with running(Worker(redis, s, RedisClock(redis), "w")) as worker:
                await wait_for(lambda: _true(worker.buffered >= 40))
                most = 0
                for _ in range(50):  # many read attempts and ticks later
                    most = max(most, worker.buffered, await pending(redis))
                    await asyncio.sleep(0.01)
                assert most <= s.max_buffer
                await redis.set(keys.CLOCK, T0 + 120_000)
                await wait_for(lambda: _eq(processed(redis), PARTITIONS * 30), timeout=30)

    asyncio.run(scenario())

"""The scripts on a real redis-server: strings compare byte-wise whatever the server's
locale, and a call that fails on an event leaves nothing that lives forever.

redis-server calls setlocale(LC_COLLATE, ""), and Lua's `<` on strings uses strcoll:
under en_US.UTF-8 "a" < "B", bytes say the opposite. The locale tests start a server
of their own under a UTF-8 locale whose collation differs from the bytes, and skip
(saying how to get one) where the machine has none.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest
import redis as redis_sync
from hypothesis import given, settings
from hypothesis import strategies as st
from redis.asyncio import Redis

from cdp import keys
from cdp.embedded import RedisServer
from cdp.events import StreamEvent, stream_encoder
from cdp.identity import partition_of
from cdp.pipeline.apply import ApplyContext, queue_apply
from cdp.scripts import BatchResult, ProfileRow, Scripts, calls, is_poison, lua_dir, source
from cdp.settings import Settings
from tests.support.values import NOW_MS as NOW
from tests.support.values import PARTITIONS

pytestmark = pytest.mark.integration

T0 = NOW - 3_600_000

BYTES_LT = (
    (lua_dir() / "includes" / "bytes.lua").read_text()
    + """
local out = {}
for i = 1, #ARGV, 2 do out[#out + 1] = bytes_lt(ARGV[i], ARGV[i + 1]) and 1 or 0 end
return out
"""
)


@pytest.fixture(scope="module")
def plain_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[redis_sync.Redis]:
    server = RedisServer(tmp_path_factory.mktemp("plain-redis"), appendonly=False).start()
    client = redis_sync.Redis.from_url(server.url)
    yield client
    client.close()
    server.stop()


pairs = st.lists(
    st.tuples(st.binary(max_size=40), st.binary(max_size=40))
    | st.text(max_size=20).flatmap(
        lambda stem: st.tuples(st.text(max_size=20), st.text(max_size=20)).map(
            lambda t: ((stem + t[0]).encode(), (stem + t[1]).encode())
        )
    ),
    min_size=1,
    max_size=40,
)


@settings(max_examples=60, deadline=None)
@given(pairs=pairs)
def test_bytes_lt_orders_as_python_orders_bytes(
    plain_redis: redis_sync.Redis, pairs: list[tuple[bytes, bytes]]
) -> None:
    args = [s for pair in pairs for s in pair]
    got = plain_redis.eval(BYTES_LT, 0, *args)
    assert got == [int(a < b) for a, b in pairs]


# -- a UTF-8 collation -------------------------------------------------------------


def utf8_locale() -> str | None:
    """A UTF-8 locale other than C.UTF-8 (which collates like bytes), if installed."""
    if shutil.which("locale") is None:
        return None
    names = subprocess.run(["locale", "-a"], capture_output=True, text=True).stdout.split()
    candidates = [n for n in names if n.lower().replace("-", "").endswith(".utf8")]
    candidates = [n for n in candidates if not n.lower().startswith(("c.", "posix"))]
    preferred = [n for n in candidates if n.lower().startswith("en_us")]
    return (preferred or candidates or [None])[0]


@pytest.fixture(scope="module")
def collating_redis(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[redis_sync.Redis]:
    """A redis-server whose Lua `<` on strings follows a UTF-8 collation."""
    name = utf8_locale()
    if name is None:
        pytest.skip(
            "no UTF-8 locale with a non-byte collation is installed; CI should install "
            "one (Debian: apt-get install -y locales && sed -i "
            "'s/# en_US.UTF-8/en_US.UTF-8/' /etc/locale.gen && locale-gen)"
        )
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LC_ALL", name)
        server = RedisServer(tmp_path_factory.mktemp("collating-redis"), appendonly=False)
        server.start()
    client = redis_sync.Redis.from_url(server.url)
    try:
        if client.eval("return tostring('a' < 'B')", 0) != b"true":
            pytest.skip(f"redis-server under LC_ALL={name} still collates like bytes")
        yield client
    finally:
        client.close()
        server.stop()


def apply(url: str, *events: StreamEvent, now: int = NOW) -> Any:
    """XADD the events (one user's partition) and apply them in one call: the raw reply."""

    async def run() -> Any:
        redis = Redis.from_url(url)
        try:
            partition = partition_of(f"user:{events[0].userId}", PARTITIONS)
            stream = keys.stream(partition)
            with contextlib.suppress(redis_sync.ResponseError):
                await redis.xgroup_create(stream, keys.GROUP, id="0", mkstream=True)
            batch = []
            for ev in events:
                entry_id = await redis.xadd(stream, {"e": stream_encoder.encode(ev)})
                batch.append((entry_id.decode(), ev))
            async with redis.pipeline(transaction=False) as pipe:
                await queue_apply(
                    pipe, Scripts(redis), Settings(), ApplyContext(now, ""), partition, batch
                )
                (reply,) = await pipe.execute(raise_on_error=False)
            return reply
        finally:
            await redis.aclose()

    return asyncio.run(run())


def url_of(client: redis_sync.Redis) -> str:
    kw = client.connection_pool.connection_kwargs
    return f"redis://{kw['host']}:{kw['port']}/0"


def identify(event_id: str, ts: int, user: str | None = None, **kw: Any) -> StreamEvent:
    return StreamEvent(eventId=event_id, ts=ts, receivedAt=ts, type="IDENTIFY", userId=user, **kw)


def test_equal_times_are_decided_by_the_eventid_bytes_not_the_locale(
    collating_redis: redis_sync.Redis,
) -> None:
    url = url_of(collating_redis)
    # Bytes: "B-1" < "a-1", so a-1 is the later write (strcoll says the opposite).
    assert max("a-1", "B-1") == "a-1"
    for user, order in (("lww1", ("a-1", "B-1")), ("lww2", ("B-1", "a-1"))):
        for event_id in order:
            reply = apply(url, identify(f"{user}-{event_id}", T0, user, traits={"plan": event_id}))
            assert BatchResult.decode(reply).applied == 1
        cid = collating_redis.get(keys.identifier(f"user:{user}")).decode()
        assert collating_redis.hget(keys.traits(cid), "plan").startswith(b'{"v":"a-1"')


def test_the_first_identifier_is_the_bytewise_first_under_any_locale(
    collating_redis: redis_sync.Redis,
) -> None:
    url = url_of(collating_redis)
    # One profile, no userId: two anonymousIds joined by an email.
    apply(url, identify("fi-1", T0, anonymousId="a1", email="fi@example.com"))
    apply(url, identify("fi-2", T0 + 1, anonymousId="B1", email="fi@example.com"))
    cid = collating_redis.get(keys.identifier("anon:a1")).decode()
    assert collating_redis.get(keys.identifier("anon:B1")).decode() == cid
    script = collating_redis.register_script(source("profile_view"))
    call = calls.profile_view.call([cid], counters=())
    (view,) = ProfileRow.decode_all(script(keys=call.keys, args=call.args))
    first = view.first_identifier
    assert first == min([b"anon:a1", b"anon:B1", b"email:fi@example.com"]) == b"anon:B1"


# -- a failed call --------------------------------------------------------------------


def test_a_call_that_fails_on_an_event_leaves_the_ids_it_recorded_with_a_ttl(
    plain_redis: redis_sync.Redis,
) -> None:
    url = url_of(plain_redis)
    user = "ttl-victim"
    assert BatchResult.decode(apply(url, identify("ttl-0", T0, user))).applied == 1
    cid = plain_redis.get(keys.identifier(f"user:{user}")).decode()
    plain_redis.set(keys.counter(cid, "Broken"), "not a sorted set")  # WRONGTYPE for it
    # A profile of before dedup moved into the profiles: no seen hash, no seenFrom or
    # seenTo. The failing call creates the hash.
    bucket = keys.seen(cid)
    plain_redis.delete(bucket)
    plain_redis.hdel(keys.profile(cid), "seenFrom", "seenTo")

    good = StreamEvent(
        eventId="ttl-1", ts=T0 + 1, receivedAt=T0, type="TRACK", userId=user, name="Ok"
    )
    bad = StreamEvent(
        eventId="ttl-2", ts=T0 + 2, receivedAt=T0, type="TRACK", userId=user, name="Broken"
    )
    reply = apply(url, good, bad)
    assert is_poison(reply), reply
    assert plain_redis.hkeys(bucket) == [b"ttl-1"]
    assert 0 < plain_redis.pttl(bucket) <= 2 * Settings().dedup_ttl_ms


def test_refused_events_leave_the_dedup_bucket_and_the_profile_untouched_under_oom(
    plain_redis: redis_sync.Redis,
) -> None:
    url = url_of(plain_redis)
    partition = partition_of("user:oom-user", PARTITIONS)
    plain_redis.config_set("maxmemory-policy", "noeviction")
    with contextlib.suppress(redis_sync.ResponseError):
        plain_redis.xgroup_create(keys.stream(partition), keys.GROUP, id="0", mkstream=True)
    entry = identify("oom-1", T0, "oom-user", traits={"plan": "pro"})
    # XADD first (refused under OOM too), then starve Redis and apply.
    stream_id = plain_redis.xadd(keys.stream(partition), {"e": stream_encoder.encode(entry)})

    async def call() -> Any:
        redis = Redis.from_url(url)
        try:
            async with redis.pipeline(transaction=False) as pipe:
                await queue_apply(
                    pipe,
                    Scripts(redis),
                    Settings(),
                    ApplyContext(NOW, ""),
                    partition,
                    [(stream_id.decode(), entry)],
                )
                (reply,) = await pipe.execute(raise_on_error=False)
            return reply
        finally:
            await redis.aclose()

    plain_redis.config_set("maxmemory", 1)
    try:
        reply = asyncio.run(call())
    finally:
        plain_redis.config_set("maxmemory", 0)
    assert isinstance(reply, redis_sync.ResponseError) and "OOM" in str(reply)
    assert not is_poison(reply)
    assert plain_redis.exists(keys.identifier("user:oom-user")) == 0  # no profile either
    assert BatchResult.decode(asyncio.run(call())).applied == 1
    cid = plain_redis.get(keys.identifier("user:oom-user")).decode()
    assert plain_redis.hkeys(keys.seen(cid)) == [b"oom-1"]

"""lua/publish-n.lua through the real ``Publisher`` on fakeredis: one script call per
request, all or nothing, counted in ``accepted``; requests coalesced in one pipeline
are answered from their own replies; a Redis that forgot the script is reloaded."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import fakeredis
import pytest
from redis.exceptions import ResponseError

from cdp import keys
from cdp.api.publisher import Publisher
from cdp.events import StreamEvent
from tests.support.metrics import total
from tests.support.values import PARTITIONS


def event(n: int, user: str) -> StreamEvent:
    return StreamEvent(eventId=f"e{n}", ts=1, receivedAt=1, type="TRACK", userId=user, name="x")


def run(coroutine: Any) -> Any:
    return asyncio.run(coroutine)


@pytest.fixture
def server() -> fakeredis.FakeServer:
    return fakeredis.FakeServer()


def stored(server: fakeredis.FakeServer) -> dict[int, list[str]]:
    r = fakeredis.FakeRedis(server=server, decode_responses=True)
    out = {}
    for p in range(PARTITIONS):
        entries = r.xrange(keys.stream(p)) if r.type(keys.stream(p)) == "stream" else []
        if entries:
            out[p] = [e["eventId"] for _, fields in entries for e in entry_events(fields)]
    return out


def entry_events(fields: dict[str, str]) -> list[dict[str, Any]]:
    """Field ``e`` (one event) or ``b`` (a JSON array of a request's events)."""
    if "e" in fields:
        return [json.loads(fields["e"])]
    events = json.loads(fields["b"])
    assert isinstance(events, list) and len(events) > 1
    return events


def entry_count(server: fakeredis.FakeServer) -> int:
    r = fakeredis.FakeRedis(server=server, decode_responses=True)
    return sum(r.xlen(keys.stream(p)) for p in range(PARTITIONS) if r.exists(keys.stream(p)))


def accepted(server: fakeredis.FakeServer) -> int:
    r = fakeredis.FakeRedis(server=server)
    return total(r, "accepted")


def test_a_request_is_stored_in_its_partitions_in_order_and_counted(
    server: fakeredis.FakeServer,
) -> None:
    async def go() -> tuple[list[str], Publisher]:
        publisher = Publisher(fakeredis.FakeAsyncRedis(server=server), PARTITIONS)
        events = [event(i, f"u{i % 3}") for i in range(9)]
        return await publisher.publish_many(events), publisher

    ids, publisher = run(go())
    assert len(ids) == 9  # the entry id of each event: one entry per partition touched
    partitions = {publisher.partition(event(i, f"u{i % 3}")) for i in range(9)}
    assert entry_count(server) == len(partitions)
    for i in range(9):  # events of one user (one partition) share their entry
        assert ids[i] == ids[i % 3]
    by_partition = stored(server)
    assert sorted(e for es in by_partition.values() for e in es) == sorted(
        f"e{i}" for i in range(9)
    )
    for p, event_ids in by_partition.items():  # each partition keeps the request's order
        assert event_ids == sorted(event_ids, key=lambda e: int(e[1:]))
        assert all(
            publisher.partition(event(int(e[1:]), f"u{int(e[1:]) % 3}")) == p for e in event_ids
        )
    assert accepted(server) == 9


def test_a_failing_request_writes_nothing_and_fails_no_other(
    server: fakeredis.FakeServer,
) -> None:
    redis = fakeredis.FakeAsyncRedis(server=server)
    publisher = Publisher(redis, PARTITIONS)
    bad_user = "bad"
    bad = publisher.partition(event(0, bad_user))
    good_users = [
        u for u in (f"g{i}" for i in range(100)) if publisher.partition(event(0, u)) != bad
    ]

    async def go() -> list[Any]:
        await redis.set(keys.stream(bad), "not a stream")
        requests = [
            publisher.publish_many([event(1, good_users[0]), event(2, good_users[1])]),
            # Its first event would go to a good partition: it must not be stored.
            publisher.publish_many([event(3, good_users[2]), event(4, bad_user)]),
            publisher.publish(event(5, good_users[3])),
        ]
        return await asyncio.gather(*requests, return_exceptions=True)

    first, second, third = run(go())
    assert isinstance(first, list) and isinstance(third, str)
    assert isinstance(second, ResponseError) and "WRONGTYPE" in str(second)
    kept = {e for es in stored(server).values() for e in es}
    assert kept == {"e1", "e2", "e5"}
    assert accepted(server) == 3


def test_a_redis_that_forgot_the_script_gets_it_again(server: fakeredis.FakeServer) -> None:
    async def go() -> None:
        redis = fakeredis.FakeAsyncRedis(server=server)
        publisher = Publisher(redis, PARTITIONS)
        await publisher.publish(event(1, "u1"))
        await redis.script_flush()
        await asyncio.gather(publisher.publish(event(2, "u2")), publisher.publish(event(3, "u3")))

    run(go())
    assert accepted(server) == 3
    assert sorted(e for es in stored(server).values() for e in es) == ["e1", "e2", "e3"]

"""``ingest-min-replicas``: a 202 means a replica holds the event; a stalled replica
makes the API answer 503 (stored by the primary), and the retry with the same
messageId is answered 202 and applied once.

A real replica: a second redis-server made ``REPLICAOF`` the stack's primary, both on
free ports; the stall is a SIGSTOP of the replica process.
"""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis as redis_sync

from cdp import keys
from cdp.embedded import RedisServer
from tests.support.stack import Stack
from tests.support.tracking import basic, total, wait_doc
from tests.support.values import ADMIN_TOKEN, PARTITIONS, T0, WRITE_KEY, ms
from tests.support.wait import wait_until


@pytest.fixture
def replicated(tmp_path: Path) -> Iterator[tuple[Stack, RedisServer, redis_sync.Redis]]:
    primary = RedisServer(tmp_path / "primary", appendonly=False).start()
    replica = RedisServer(tmp_path / "replica", appendonly=False).start()
    client = redis_sync.Redis.from_url(primary.url, decode_responses=True)
    on_replica = redis_sync.Redis.from_url(replica.url, decode_responses=True)
    stack = Stack(primary.url, client, tmp_path)
    try:
        on_replica.replicaof("127.0.0.1", primary.port)
        wait_until(
            lambda: on_replica.info("replication").get("master_link_status") == "up",
            message="the replica to sync",
        )
        stack.set_clock(T0)
        stack.start_api(
            write_keys=WRITE_KEY,
            admin_token=ADMIN_TOKEN,
            ingest_min_replicas="1",
            ingest_replica_timeout="500ms",
        )
        stack.start_worker()
        yield stack, replica, on_replica
    finally:
        if replica.process is not None and replica.process.poll() is None:
            replica.process.send_signal(signal.SIGCONT)
        stack.close()
        client.close()
        on_replica.close()
        replica.stop()
        primary.stop()


def on_stream(client: redis_sync.Redis, field: str, value: str) -> int:
    """How many events in the partition streams of ``client`` have ``field`` = ``value``."""
    found = 0
    for p in range(PARTITIONS):
        for _, entry in client.xrange(keys.stream(p)):
            events = [json.loads(entry["e"])] if "e" in entry else json.loads(entry["b"])
            found += sum(e.get(field) == value for e in events)
    return found


def track(stack: Stack, message_id: str, user: str) -> Any:
    call = {"userId": user, "event": "Bought", "messageId": message_id, "timestamp": T0}
    headers = {"Content-Type": "application/json", **basic(WRITE_KEY)}
    return stack.request("POST", "/v1/track", json.dumps(call).encode(), headers)


def test_a_202_means_the_replica_holds_the_event(
    replicated: tuple[Stack, RedisServer, redis_sync.Redis],
) -> None:
    stack, _, on_replica = replicated
    stack.send("seed-1", T0, type="TRACK", userId="u1", name="Started")
    assert on_stream(on_replica, "eventId", "seed-1") == 1
    assert track(stack, "m-1", "u1").status == 200
    assert on_stream(on_replica, "eventId", "m-1") == 1


def test_a_stalled_replica_is_a_503_and_the_retry_is_applied_once(
    replicated: tuple[Stack, RedisServer, redis_sync.Redis],
) -> None:
    stack, replica, _ = replicated
    assert replica.process is not None
    replica.process.send_signal(signal.SIGSTOP)
    refused = track(stack, "m-stalled", "u2")
    assert refused.status == 503, refused.body
    body = refused.json()
    assert "not yet replicated to 1 replica" in body["message"]
    assert "same messageId" in body["message"] and refused.headers["Retry-After"]
    payload = {"type": "TRACK", "userId": "u3", "name": "Started"}
    seed = stack.post("/cdp/ingest", {"eventId": "e-stalled", "ts": T0, "payload": payload})
    assert seed.status == 503 and "not yet replicated" in seed.json()["message"]
    assert on_stream(stack.r, "eventId", "m-stalled") == 1  # the primary holds it

    replica.process.send_signal(signal.SIGCONT)
    wait_until(
        lambda: track(stack, "m-stalled", "u2").status == 200,
        timeout=30,
        message="the retry to be acknowledged",
    )
    stack.set_clock(ms(T0) + 60_000)
    doc = wait_doc(stack, "user:u2", {"Bought": 1})
    stack.wait_idle()
    assert total(doc, "Bought") == 1
    assert stack.metric("dedup_hits") >= 1  # the stored first attempt, or a retry

"""Identity resolution end to end (API, worker processes, real Redis): alias chains,
merges, the guard rails and lookups by any identifier or canonical id."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys

import pytest
from redis.asyncio import Redis

from cdp import keys
from cdp.profiles import read_profile
from tests.support.stack import ROOT, Stack

pytestmark = pytest.mark.integration

CLOCK = "2025-10-04T10:00:10Z"


@pytest.fixture
def live(stack: Stack) -> Stack:
    stack.set_clock("2025-10-04T10:00:00Z")
    stack.start_api()
    stack.start_worker()
    return stack


def lookup(stack: Stack, identifier: str) -> dict[str, object]:
    async def go() -> dict[str, object]:
        redis = Redis.from_url(stack.redis_url)
        try:
            return await read_profile(redis, identifier)
        finally:
            await redis.aclose()

    return asyncio.run(go())


def merges(stack: Stack) -> list[dict[str, str]]:
    return [fields for _, fields in stack.r.xrange(keys.MERGES)]


def test_alias_chain_and_a_later_email_give_one_profile(live: Stack) -> None:
    live.send("e1", "2025-10-04T10:00:01Z", type="TRACK", anonymousId="anon1", name="Viewed")
    live.send("e2", "2025-10-04T10:00:01Z", type="TRACK", anonymousId="anon2", name="Viewed")
    live.set_clock("2025-10-04T10:00:06Z")  # two anonymous profiles exist first
    live.wait_metric("processed", 2)
    live.send("e3", "2025-10-04T10:00:02Z", type="ALIAS", anonymousId="anon1", userId="user1")
    live.send("e4", "2025-10-04T10:00:03Z", type="ALIAS", anonymousId="anon2", userId="user1")
    live.send(
        "e5",
        "2025-10-04T10:00:04Z",
        type="IDENTIFY",
        anonymousId="anon2",
        email="One@Example.com",
        traits={"plan": "pro"},
    )
    live.set_clock(CLOCK)
    live.wait_metric("processed", 5)
    profile = lookup(live, "email:one@example.com")
    assert profile["identifiers"] == [
        "anon:anon1",
        "anon:anon2",
        "email:one@example.com",
        "user:user1",
    ]
    assert profile["counters"]["Viewed"]["total"] == 2
    assert profile["traits"]["plan"]["v"] == "pro"
    for identifier in profile["identifiers"]:
        assert lookup(live, identifier)["canonicalId"] == profile["canonicalId"]
    # Two anonymous profiles existed before the aliases: one was merged into the other.
    merged = [m for m in merges(live) if m["status"] == "merged"]
    assert len(merged) == 1
    assert merged[0]["survivor"] == profile["canonicalId"]
    assert profile["mergedFrom"] == [merged[0]["merged"]]


def test_a_merged_away_canonical_id_resolves_to_the_survivor(live: Stack) -> None:
    live.send(
        "e1", "2025-10-04T10:00:01Z", type="IDENTIFY", anonymousId="a", traits={"seen": "anon"}
    )
    live.send("e2", "2025-10-04T10:00:01Z", type="IDENTIFY", userId="u", traits={"plan": "pro"})
    live.set_clock("2025-10-04T10:00:07Z")
    live.wait_metric("processed", 2)
    before = {i: lookup(live, i)["canonicalId"] for i in ("anon:a", "user:u")}
    assert before["anon:a"] != before["user:u"]
    live.send("e3", "2025-10-04T10:00:05Z", type="ALIAS", anonymousId="a", userId="u")
    live.set_clock("2025-10-04T10:00:12Z")
    live.wait_metric("processed", 3)
    survivor = lookup(live, "user:u")
    (record,) = merges(live)
    loser = record["merged"]
    assert record["survivor"] == survivor["canonicalId"] and record["eventId"] == "e3"
    assert {loser, survivor["canonicalId"]} == set(before.values())
    assert lookup(live, loser)["canonicalId"] == survivor["canonicalId"]
    assert {k: v["v"] for k, v in survivor["traits"].items()} == {"seen": "anon", "plan": "pro"}
    # The CLI resolves the old id the same way.
    done = subprocess.run(
        [sys.executable, "-m", "cdp", "profile", loser],
        cwd=ROOT,
        env=live.env(),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["canonicalId"] == survivor["canonicalId"]
    # Nothing of the loser is left but its forward pointer.
    assert live.r.hgetall(keys.profile(loser)).keys() == {"mergedInto", "mergedAt", "mergeEventId"}
    assert not live.r.exists(keys.traits(loser), keys.identifiers(loser), keys.counters(loser))


def test_two_identified_users_sharing_an_email_stay_two_profiles(live: Stack) -> None:
    live.send(
        "e1",
        "2025-10-04T10:00:01Z",
        type="IDENTIFY",
        userId="alice",
        email="family@example.com",
        traits={"name": "Alice"},
    )
    live.send(
        "e2",
        "2025-10-04T10:00:02Z",
        type="IDENTIFY",
        userId="bob",
        email="family@example.com",
        traits={"name": "Bob"},
    )
    live.set_clock(CLOCK)
    live.wait_metric("processed", 2)
    alice, bob = lookup(live, "user:alice"), lookup(live, "user:bob")
    assert alice["canonicalId"] != bob["canonicalId"]
    assert alice["identifiers"] == ["email:family@example.com", "user:alice"]
    assert bob["identifiers"] == ["user:bob"]
    assert alice["traits"]["name"]["v"] == "Alice" and bob["traits"]["name"]["v"] == "Bob"
    (refusal,) = merges(live)
    assert refusal["status"] == "refused" and refusal["reason"] == "different userIds"
    assert refusal["eventId"] == "e2" and refusal["profile"] == alice["canonicalId"]


def test_a_blocked_anonymous_id_on_a_thousand_users_merges_nothing(live: Stack) -> None:
    n = 1000
    for i in range(n):
        live.send(
            f"e{i}",
            "2025-10-04T10:00:01Z",
            type="IDENTIFY",
            userId=f"user{i}",
            anonymousId="null",
            traits={"n": i},
        )
    live.set_clock(CLOCK)
    live.wait_metric("processed", n, timeout=60)
    assert int(live.r.get(keys.PROFILE_SEQ)) == n
    assert live.r.xlen(keys.MERGES) == 0
    assert live.r.get(keys.identifier("anon:null")) is None
    assert lookup(live, "user:user7")["identifiers"] == ["user:user7"]

"""The admin profile API and the NDJSON export end to end (API and worker processes,
real Redis, the test clock): auth, exact documents, lookups by any identifier or
merged-away id, pagination, the streamed export and ``cdp export``."""

from __future__ import annotations

import asyncio
import io
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import redis as redis_sync
from aiohttp import ClientPayloadError, web
from aiohttp.test_utils import TestClient, TestServer
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

import cdp.export
from cdp import keys
from cdp.api.app import MIDDLEWARES
from cdp.api.appkeys import REDIS, SETTINGS
from cdp.api.profiles import add_profile_routes
from cdp.export import ProgressBar, export_profiles
from cdp.profiles import read_page
from cdp.settings import Settings
from tests.support.stack import ROOT, Response, Stack
from tests.support.values import ADMIN_TOKEN as TOKEN
from tests.support.values import T0
from tests.support.wait import wait_until

pytestmark = pytest.mark.integration

ROUTES = [
    "/cdp/profiles/user:u1",
    "/cdp/profiles/user:u1/traits",
    "/cdp/profiles/user:u1/identifiers",
    "/cdp/profiles/user:u1/segments",
    "/cdp/profiles",
    "/cdp/profiles:export",
]


@pytest.fixture
def live(stack: Stack) -> Stack:
    stack.set_clock(T0)
    stack.start_api(admin_token=TOKEN)
    stack.start_worker()
    return stack


def admin(stack: Stack, path: str, token: str = TOKEN) -> Response:
    return stack.request("GET", path, headers={"Authorization": f"Bearer {token}"})


def ok(stack: Stack, path: str) -> Any:
    resp = admin(stack, path)
    assert resp.status == 200, (path, resp.body)
    return resp.json()


def apply(stack: Stack, clock: str, processed: int) -> None:
    """Move the clock past what was sent and wait until it is all applied."""
    stack.set_clock(clock)
    stack.wait_metric("processed", processed)
    stack.wait_idle()


def walk(stack: Stack, limit: int) -> list[dict[str, Any]]:
    profiles: list[dict[str, Any]] = []
    cursor: str | None = "0"
    pages = 0
    while cursor is not None:
        page = ok(stack, f"/cdp/profiles?limit={limit}&cursor={cursor}")
        assert len(page["profiles"]) <= limit
        profiles += page["profiles"]
        cursor = page["cursor"]
        pages += 1
        assert pages <= 100, "the cursor does not advance"
    return profiles


def test_every_route_needs_the_admin_token(live: Stack) -> None:
    for path in [*ROUTES, "/cdp/profiles/phone:1", "/cdp/profiles/user:nobody"]:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"}):
            resp = live.request("GET", path, headers=headers)
            assert resp.status == 401, (path, headers, resp.body)
            assert resp.json() == {
                "status": "error",
                "message": "this route needs the admin token: Authorization: Bearer <token>",
            }
    # With the token, an empty store: an empty page and an empty export.
    assert ok(live, "/cdp/profiles") == {"profiles": [], "cursor": None}
    export = admin(live, "/cdp/profiles:export")
    assert (export.status, export.body) == (200, b"")


def test_a_profile_document_is_exact_with_its_segments(live: Stack) -> None:
    live.send(
        "e1",
        "2025-10-04T10:00:01Z",
        type="IDENTIFY",
        userId="u1",
        email=" Ann@Example.COM ",
        traits={"plan": "pro", "country": "US", "tags": ["a", "b"]},
    )
    live.send("e2", "2025-10-04T10:00:02Z", type="TRACK", userId="u1", name="Clicked")
    live.send("e3", "2025-10-04T10:00:03Z", type="ALIAS", userId="u1", anonymousId="a1")
    live.send("e4", "2025-10-04T10:00:04Z", type="IDENTIFY", userId="u1", traits={"country": None})
    apply(live, "2025-10-04T10:00:10Z", 4)
    wait_until(lambda: live.r.xlen(keys.SEGMENT_EVENTS) >= 1, message="the pro_plan ENTER")
    (entry,) = live.r.xrange(keys.SEGMENT_EVENTS)
    assert entry[1]["eventId"] == "seg:pro_plan:p1:1" and entry[1]["transition"] == "ENTER"
    traits = {
        "plan": {"v": "pro", "ts": "2025-10-04T10:00:01.000Z", "eventId": "e1"},
        "tags": {"v": ["a", "b"], "ts": "2025-10-04T10:00:01.000Z", "eventId": "e1"},
    }
    tombstones = {"country": {"ts": "2025-10-04T10:00:04.000Z", "eventId": "e4"}}
    identifiers = ["anon:a1", "email:ann@example.com", "user:u1"]
    segments = {"pro_plan": {"since": "2025-10-04T10:00:10.000Z"}}
    bucket = {"total": 1, "buckets": {"1759572000000": 1}}
    assert ok(live, "/cdp/profiles/user:u1") == {
        "canonicalId": "p1",
        "identifiers": identifiers,
        "traits": traits,
        "tombstones": tombstones,
        "firstSeen": "2025-10-04T10:00:01.000Z",
        "lastSeen": "2025-10-04T10:00:04.000Z",
        "createdAt": "2025-10-04T10:00:10.000Z",
        "mergedFrom": [],
        "counters": {
            "$seen": {"total": 4, "buckets": {"1759572000000": 4}},  # all four events
            "$track": bucket,
            "Clicked": bucket,
        },
        "segments": segments,
    }
    assert ok(live, "/cdp/profiles/p1/traits") == {
        "canonicalId": "p1",
        "traits": traits,
        "tombstones": tombstones,
    }
    assert ok(live, "/cdp/profiles/anon:a1/identifiers") == {
        "canonicalId": "p1",
        "identifiers": identifiers,
    }
    assert ok(live, "/cdp/profiles/email:ann@example.com/segments") == {
        "canonicalId": "p1",
        "segments": segments,
    }
    # A deleted custom segment's leftover state in the profile's hash is not shown.
    live.r.hset(keys.profile_segments("p1"), "gone", '{"in":true,"n":1,"since":"x"}')
    assert ok(live, "/cdp/profiles/p1/segments")["segments"] == segments


def test_any_identifier_or_merged_away_id_answers_the_survivor(live: Stack) -> None:
    live.send("e1", "2025-10-04T10:00:01Z", type="TRACK", anonymousId="a1", name="Viewed")
    apply(live, "2025-10-04T10:00:07Z", 1)  # p1: the anonymous visitor
    live.send(
        "e2",
        "2025-10-04T10:00:08Z",
        type="IDENTIFY",
        userId="org/42",
        email="Ann+cdp@Example.com",
        traits={"plan": "free"},
    )
    apply(live, "2025-10-04T10:00:14Z", 2)  # p2: the user
    assert ok(live, "/cdp/profiles/user:org%2F42")["canonicalId"] == "p2"
    live.send("e3", "2025-10-04T10:00:15Z", type="ALIAS", anonymousId="a1", userId="org/42")
    apply(live, "2025-10-04T10:00:21Z", 3)  # p2 is merged into p1, the older
    survivor = ok(live, "/cdp/profiles/p1")
    assert survivor["mergedFrom"] == ["p2"]
    assert survivor["identifiers"] == ["anon:a1", "email:ann+cdp@example.com", "user:org/42"]
    for path in (
        "user:org%2F42",
        "anon:a1",
        "email:ann+cdp@example.com",
        "email:%20ANN+cdp@example.com%20",  # normalised like an event's email
        "p2",  # merged away
    ):
        assert ok(live, f"/cdp/profiles/{path}") == survivor, path
    assert ok(live, "/cdp/profiles/p2/identifiers")["canonicalId"] == "p1"
    for path, message in (
        ("user:nobody", "no profile knows the identifier 'user:nobody'"),
        ("p99", "no profile with canonical id 'p99'"),
        ("user:null", "'user:null' is a blocked placeholder value"),
        ("anon:nobody/traits", "no profile knows the identifier 'anon:nobody'"),
    ):
        resp = admin(live, f"/cdp/profiles/{path}")
        assert (resp.status, resp.json()["message"]) == (404, message), path
    for path in ("phone:123", "u1", "P1", "p1x/segments"):
        resp = admin(live, f"/cdp/profiles/{path}")
        assert resp.status == 400, path
        assert "is not a profile identifier: use user:<userId>" in resp.json()["message"]


def test_a_malformed_id_is_a_400_on_every_route_that_takes_one(stack: Stack) -> None:
    """Never a 404 (ProfileNotFound) for what cannot be an identifier: reads, erasure
    and lifting a suppression alike; a well-formed unknown one stays a 404."""
    stack.start_api(admin_token=TOKEN)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    for method, route in (
        ("GET", "/cdp/profiles/"),
        ("DELETE", "/cdp/profiles/"),
        ("DELETE", "/cdp/suppressions/"),
    ):
        for malformed in ("phone:123", "u1", "P1", "p1x", "user:", "email:%20%20"):
            resp = stack.request(method, route + malformed, headers=auth)
            assert resp.status == 400, (method, route + malformed, resp.body)
            assert resp.json()["status"] == "error"
        for unknown in ("user:nobody", "p99", "user:null"):
            resp = stack.request(method, route + unknown, headers=auth)
            assert resp.status == 404, (method, route + unknown, resp.body)
    resp = stack.request("DELETE", "/cdp/profiles/phone:1", headers=auth)
    assert resp.json()["message"] == (
        "'phone:1' is not a profile identifier: use user:<userId>, anon:<anonymousId>, "
        "email:<address> or a canonical id such as p12"
    )
    resp = stack.request("DELETE", "/cdp/suppressions/user:", headers=auth)
    assert resp.json()["message"] == "'user:' has no value after user:"


@pytest.fixture
def many(live: Stack) -> Stack:
    """27 profiles made, two merged away: 25 live, with gaps in canonical-id order."""
    for i in range(25):
        live.send(f"u{i}", "2025-10-04T10:00:01Z", type="IDENTIFY", userId=f"u{i}", traits={"i": i})
    for anon in ("a1", "a2"):
        live.send(anon, "2025-10-04T10:00:01Z", type="TRACK", anonymousId=anon, name="Viewed")
    apply(live, "2025-10-04T10:00:07Z", 27)
    live.send("m1", "2025-10-04T10:00:08Z", type="ALIAS", anonymousId="a1", userId="u3")
    live.send("m2", "2025-10-04T10:00:08Z", type="ALIAS", anonymousId="a2", userId="u17")
    apply(live, "2025-10-04T10:00:14Z", 29)
    assert live.r.zcard(keys.PROFILES) == 25 and int(live.r.get(keys.PROFILE_SEQ)) == 27
    return live


def test_pages_visit_every_profile_exactly_once(many: Stack) -> None:
    order = many.r.zrange(keys.PROFILES, 0, -1)
    one_by_one = walk(many, 1)
    assert [p["canonicalId"] for p in one_by_one] == order
    assert walk(many, 7) == one_by_one == walk(many, 1000)
    for doc in one_by_one[:3]:
        assert ok(many, f"/cdp/profiles/{doc['canonicalId']}") == doc
    first = ok(many, "/cdp/profiles?limit=7")
    assert first["cursor"] == str(int(many.r.zscore(keys.PROFILES, order[6])))
    assert ok(many, "/cdp/profiles")["cursor"] is None  # default limit 100: one page
    for query, message in (
        ("limit=0", "query parameter 'limit' must be between 1 and 1000"),
        ("limit=1001", "query parameter 'limit' must be between 1 and 1000"),
        ("cursor=abc", "query parameter 'cursor' must be a whole number"),
        ("cursor=-1", "query parameter 'cursor' must be at least 0"),
    ):
        resp = admin(many, f"/cdp/profiles?{query}")
        assert (resp.status, resp.json()["message"]) == (400, message)


def test_the_export_and_cdp_export_write_every_live_profile_once(
    many: Stack, tmp_path: Path
) -> None:
    expected = walk(many, 1000)
    resp = admin(many, "/cdp/profiles:export")
    assert resp.status == 200
    assert resp.headers["Content-Type"] == "application/x-ndjson"
    assert resp.headers.get("Transfer-Encoding") == "chunked"  # streamed, not buffered
    assert resp.body.endswith(b"\n")
    lines = resp.body.split(b"\n")[:-1]
    assert [json.loads(line) for line in lines] == expected
    assert {d["canonicalId"] for d in expected} == set(many.r.zrange(keys.PROFILES, 0, -1))

    def cdp_export(target: str) -> subprocess.CompletedProcess[bytes]:
        done = subprocess.run(
            [sys.executable, "-m", "cdp", "export", target],
            cwd=ROOT,
            env=many.env(),
            capture_output=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        assert done.stderr.startswith(b"cdp: exported 25 profiles to "), done.stderr
        assert done.stderr.count(b"\n") == 1 and b"\r" not in done.stderr  # no TTY, no bar
        return done

    out = tmp_path / "export" / "profiles.ndjson"
    out.parent.mkdir()
    cdp_export(str(out))
    assert out.read_bytes() == resp.body
    assert [p.name for p in out.parent.iterdir()] == ["profiles.ndjson"]  # no .partial left
    assert cdp_export("-").stdout == resp.body

    # In process, in chunks of 4: the same bytes, progress after each chunk.
    calls: list[tuple[int, int]] = []

    async def chunked() -> bytes:
        redis = Redis.from_url(many.redis_url)
        buffer = io.BytesIO()
        try:
            assert await export_profiles(redis, buffer, lambda *a: calls.append(a), chunk=4) == 25
        finally:
            await redis.aclose()
        return buffer.getvalue()

    assert asyncio.run(chunked()) == resp.body
    assert calls == [(n, 25) for n in (4, 8, 12, 16, 20, 24, 25)]


@pytest.mark.parametrize(
    ("fail_at", "expected"),
    [
        (None, (200, 1200)),
        (1, (503, "the event store is unavailable; retry shortly")),  # before any byte
        (2, (200, "truncated")),  # after the first chunk: no complete-looking end
    ],
)
def test_an_export_failing_midway_is_cut_short_not_completed(
    redis_url: str,
    r: redis_sync.Redis,
    monkeypatch: pytest.MonkeyPatch,
    fail_at: int | None,
    expected: tuple[int, object],
) -> None:
    with r.pipeline(transaction=False) as pipe:
        for n in range(1, 1201):  # three chunks of 500, written straight to Redis
            pipe.hset(keys.profile(f"p{n}"), "createdAt", "2025-10-04T10:00:00.000Z")
            pipe.zadd(keys.PROFILES, {f"p{n}": n})
        pipe.execute()
    calls = 0

    async def flaky(redis: Redis, after: int, limit: int) -> Any:
        nonlocal calls
        calls += 1
        if calls == fail_at:
            raise RedisConnectionError("Connection closed by server.")
        return await read_page(redis, after, limit)

    monkeypatch.setattr(cdp.export, "read_page", flaky)

    async def fetch() -> tuple[int, object]:
        redis = Redis.from_url(redis_url)
        app = web.Application(middlewares=MIDDLEWARES)
        app[SETTINGS] = Settings(redis_url=redis_url, admin_token=TOKEN)
        app[REDIS] = redis
        add_profile_routes(app)
        try:
            async with TestClient(TestServer(app)) as client:
                resp = await client.get(
                    "/cdp/profiles:export", headers={"Authorization": f"Bearer {TOKEN}"}
                )
                try:
                    body = await resp.read()
                except ClientPayloadError:
                    return resp.status, "truncated"
                if resp.status != 200:
                    return resp.status, json.loads(body)["message"]
                return resp.status, body.count(b"\n")
        finally:
            await redis.aclose()

    assert asyncio.run(fetch()) == expected


def test_the_progress_bar_redraws_in_place() -> None:
    stream = io.StringIO()
    bar = ProgressBar(stream, interval=0)
    bar(1, 4)
    bar(4, 4)
    bar.finish()
    assert stream.getvalue().split("\r") == [
        "",
        "[#######.......................] 1/4  25%",
        "[##############################] 4/4 100%",
        " " * 41,
        "",
    ]

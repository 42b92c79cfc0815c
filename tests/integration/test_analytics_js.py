"""What a browser running analytics.js sends, byte for byte in shape, and the rules of
the Segment tracking API around it: project settings, ``text/plain`` bodies carrying
the writeKey, CORS preflight and headers, gzip, batch limits and partial rejection,
write-key auth, batch-level context, Segment's clock-skew correction, late events and
``/v1/import``.

Every process runs on the Redis test clock (``CDP_CLOCK=redis``), so receivedAt is
exactly the clock and event times are chosen relative to it.
"""

from __future__ import annotations

import gzip
import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis as redis_sync

from cdp import keys
from cdp.embedded import RedisServer
from cdp.events import iso_ms
from tests.support.events import entry_events
from tests.support.stack import Response, Stack
from tests.support.tracking import WRITE_KEYS, assert_person, basic, read_doc, total, wait_doc
from tests.support.values import ADMIN_TOKEN as TOKEN
from tests.support.values import PARTITIONS, T0, iso, ms
from tests.support.wait import wait_until

pytestmark = pytest.mark.integration

ORIGIN = "https://shop.example"
HOUR = 3_600_000


def mid() -> str:
    return f"ajs-next-{uuid.uuid4().hex}"


def js_call(kind: str, at: int, **fields: Any) -> dict[str, Any]:
    """One call as analytics.js (analytics-next) puts it on the wire."""
    return {
        "type": kind,
        "messageId": mid(),
        "timestamp": iso(at),
        "sentAt": iso(at + 40),
        "integrations": {},
        "context": {
            "page": {"path": "/", "url": f"{ORIGIN}/", "title": "Shop"},
            "userAgent": "Mozilla/5.0 (X11; Linux x86_64) Firefox/131.0",
            "locale": "en-GB",
            "library": {"name": "analytics.js", "version": "next-1.70.0"},
        },
        "_metadata": {"bundled": ["Segment.io"], "unbundled": [], "bundledIds": []},
        "writeKey": "wk1",
        **fields,
    }


def js_post(stack: Stack, path: str, call: dict[str, Any]) -> Response:
    """POST as the browser does: text/plain (no preflight needed), no Authorization."""
    return stack.request(
        "POST",
        path,
        json.dumps(call).encode(),
        {"Content-Type": "text/plain", "Origin": ORIGIN},
    )


def post(stack: Stack, path: str, body: Any, headers: dict[str, str] | None = None) -> Response:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return stack.request("POST", path, raw, {"Content-Type": "application/json", **(headers or {})})


def assert_segment_error(resp: Response, status: int) -> dict[str, Any]:
    assert resp.status == status, (resp.status, resp.body)
    body: dict[str, Any] = resp.json()
    assert isinstance(body.get("code"), str) and body["code"], body
    assert isinstance(body.get("message"), str) and body["message"], body
    return body


def partition_streams() -> list[str]:
    return [keys.stream(p) for p in range(PARTITIONS)]


def stored(stack: Stack, event_id: str) -> dict[str, Any] | None:
    """The event as stored in its partition stream (field ``e``), by eventId."""
    for name in partition_streams():
        for _, fields in stack.r.xrange(name):
            for event in entry_events(fields):
                if event["eventId"] == event_id:
                    return dict(event)
    return None


def dropped_ids(stack: Stack) -> set[str]:
    return {json.loads(f["e"])["eventId"] for _, f in stack.r.xrange(keys.DROPPED)}


def segment_events(stack: Stack) -> list[dict[str, Any]]:
    return [json.loads(f["e"]) for _, f in stack.r.xrange(keys.SEGMENT_EVENTS)]


@pytest.fixture(scope="module")
def api_process(
    redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    """One API process (no worker) for the tests that only look at what it accepts."""
    client = redis_sync.Redis.from_url(redis_server.url, decode_responses=True)
    shared = Stack(redis_server.url, client, tmp_path_factory.mktemp("api"))
    shared.start_api(write_keys=WRITE_KEYS, admin_token=TOKEN)
    yield shared
    shared.close()
    client.close()


@pytest.fixture
def api(api_process: Stack, redis_url: str) -> Stack:
    """The API alone, Redis emptied: what is accepted stays in the partition streams."""
    api_process.set_clock(T0)
    return api_process


@pytest.fixture
def live(stack: Stack) -> Stack:
    """API and worker."""
    stack.set_clock(T0)
    stack.start_api(write_keys=WRITE_KEYS, admin_token=TOKEN)
    stack.start_worker()
    return stack


def advance(stack: Stack, to: int, processed: int) -> None:
    stack.set_clock(to)
    stack.wait_metric("processed", processed)
    stack.wait_idle()


# -- the browser ---------------------------------------------------------------------


def test_project_settings_point_the_browser_here(api: Stack) -> None:
    resp = api.get("/v1/projects/wk1/settings")
    assert resp.status == 200, resp.body
    io = resp.json()["integrations"]["Segment.io"]
    assert io["apiKey"] == "wk1"
    assert io["apiHost"] == f"127.0.0.1:{api.api_port}/v1"
    assert resp.headers.get("Access-Control-Allow-Origin") in ("*", ORIGIN)
    assert api.get("/v1/projects/nope/settings").status == 404


def test_cors_preflight_is_answered(api: Stack) -> None:
    resp = api.request(
        "OPTIONS",
        "/v1/t",
        headers={
            "Origin": ORIGIN,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type",
        },
    )
    assert resp.status == 204, resp.body
    assert resp.headers.get("Access-Control-Allow-Origin") in ("*", ORIGIN)
    methods = {m.strip().upper() for m in resp.headers["Access-Control-Allow-Methods"].split(",")}
    assert "POST" in methods
    allowed = {h.strip().lower() for h in resp.headers["Access-Control-Allow-Headers"].split(",")}
    assert "content-type" in allowed


def test_a_browser_session_builds_the_same_profile_as_the_sdk(live: Stack) -> None:
    t0 = ms(T0)
    user, anon = f"js-{uuid.uuid4().hex[:8]}", f"ajs-anon-{uuid.uuid4().hex[:8]}"
    email = "Ada.Lovelace@Example.COM"
    calls = [
        ("/v1/p", js_call("page", t0, anonymousId=anon, name="Pricing", properties={})),
        (
            "/v1/i",
            js_call(
                "identify",
                t0 + 1000,
                userId=user,
                anonymousId=anon,
                traits={"email": email, "plan": "pro"},
            ),
        ),
        (
            "/v1/t",
            js_call(
                "track",
                t0 + 2000,
                userId=user,
                anonymousId=anon,
                event="Plan Upgraded",
                properties={"from": "free"},
            ),
        ),
        ("/v1/a", js_call("alias", t0 + 3000, userId=user, anonymousId=anon, previousId=anon)),
        ("/v1/p", js_call("page", t0 + 4000, userId=user, anonymousId=anon, name="Dashboard")),
        (
            "/v1/g",
            js_call(
                "group",
                t0 + 5000,
                userId=user,
                anonymousId=anon,
                groupId="acme-1",
                traits={"name": "Acme Inc", "employees": 42},
            ),
        ),
    ]
    for path, call in calls:
        resp = js_post(live, path, call)
        assert (resp.status, resp.json()) == (200, {"success": True}), (path, resp.body)
        assert resp.headers.get("Access-Control-Allow-Origin") in ("*", ORIGIN), path

    advance(live, t0 + 30_000, processed=len(calls))
    doc = wait_doc(live, f"user:{user}", {"Plan Upgraded": 1, "$page": 2})
    assert_person(doc, user=user, email=email, anon=anon, event="Plan Upgraded", pages=2)
    assert doc["firstSeen"] == "2025-10-04T10:00:00.000Z"
    assert doc["lastSeen"] == "2025-10-04T10:00:05.000Z"


# -- transport: gzip, sizes, JSON ------------------------------------------------------


def test_a_gzip_batch_is_accepted_and_a_false_gzip_is_a_400(api: Stack) -> None:
    at = ms(T0)
    calls = [
        {
            "type": "track",
            "userId": "gz-1",
            "event": "Zipped",
            "messageId": f"gz-{i}",
            "timestamp": iso(at),
        }
        for i in range(3)
    ]
    body = gzip.compress(json.dumps({"batch": calls}).encode())
    headers = {"Content-Type": "application/json", "Content-Encoding": "gzip", **basic("wk1")}
    resp = api.request("POST", "/v1/batch", body, headers)
    assert (resp.status, resp.json()) == (200, {"success": True}), resp.body
    assert all(stored(api, f"gz-{i}") for i in range(3))

    resp = api.request("POST", "/v1/batch", b'{"batch": "this is not gzip"}', headers)
    assert_segment_error(resp, 400)
    resp = api.request("POST", "/v1/track", b"\x1f\x8b\x08\x00garbage", headers)
    assert_segment_error(resp, 400)


def test_batch_limits_and_partial_rejection(api: Stack) -> None:
    at = iso(ms(T0))
    auth = basic("wk1")

    def track(i: int, prefix: str = "m", **extra: Any) -> dict[str, Any]:
        return {
            "type": "track",
            "userId": f"b-{i}",
            "event": "E",
            "messageId": f"{prefix}-{i}",
            "timestamp": at,
            **extra,
        }

    too_many = post(api, "/v1/batch", {"batch": [track(i) for i in range(2501)]}, auth)
    assert_segment_error(too_many, 400)
    most = post(api, "/v1/batch", {"batch": [track(i, "most") for i in range(2500)]}, auth)
    assert (most.status, most.json()) == (200, {"success": True}), most.body

    padding = "x" * 2000
    huge = {"batch": [track(i, properties={"pad": padding}) for i in range(300)]}
    assert len(json.dumps(huge)) > 500 * 1024
    assert_segment_error(post(api, "/v1/batch", huge, auth), 413)
    zipped = gzip.compress(json.dumps(huge).encode())  # small on the wire, not unpacked
    resp = api.request(
        "POST",
        "/v1/batch",
        zipped,
        {"Content-Type": "application/json", "Content-Encoding": "gzip", **auth},
    )
    assert_segment_error(resp, 413)
    larger = {"batch": [track(i, properties={"pad": padding}) for i in range(600)]}
    resp = post(api, "/v1/batch", larger, auth)  # past the server's own body limit too
    assert_segment_error(resp, 413)
    assert resp.headers.get("Access-Control-Allow-Origin") == "*"

    big_call = track(1, properties={"pad": "y" * 33_000})
    mixed = {"batch": [track(0), big_call, track(2), {"type": "track", "userId": "b-3"}]}
    resp = post(api, "/v1/batch", mixed, auth)
    assert resp.status == 200, resp.body
    body = resp.json()
    assert body["success"] is True
    rejected = {r["index"]: r for r in body["rejected"]}
    assert set(rejected) == {1, 3}
    assert rejected[1]["messageId"] == "m-1"
    assert rejected[1]["code"] == "request_too_large"  # Segment-style code of a 413
    assert "32768" in rejected[1]["message"]
    assert rejected[3]["code"] == "invalid_request" and rejected[3]["messageId"] is None
    assert "event" in rejected[3]["message"]
    assert stored(api, "m-0") and stored(api, "m-2") and not stored(api, "m-1")

    # No valid call: still 200, as Segment answers, with every call in `rejected`.
    all_bad = {"batch": [{"type": "track", "userId": "b-9"}, {"type": "nope", "userId": "x"}]}
    resp = post(api, "/v1/batch", all_bad, auth)
    assert resp.status == 200, resp.body
    assert [r["index"] for r in resp.json()["rejected"]] == [0, 1]
    # A batch that is not a list of objects is refused whole.
    assert_segment_error(post(api, "/v1/batch", {"batch": [track(5), "x"]}, auth), 400)
    assert not stored(api, "m-5")

    for raw in (b"{not json", b"", b"[1, 2]"):
        assert_segment_error(post(api, "/v1/batch", raw, auth), 400)
    assert_segment_error(post(api, "/v1/track", b"{not json", auth), 400)
    assert_segment_error(post(api, "/v1/batch", {"batch": []}, auth), 400)


def test_write_keys(api: Stack) -> None:
    call = {"userId": "wk-user", "event": "Keyed", "timestamp": iso(ms(T0))}
    refused = post(api, "/v1/track", call, basic("nope"))
    assert_segment_error(refused, 401)
    assert refused.headers.get("Access-Control-Allow-Origin") == "*"  # a browser can read it
    assert_segment_error(post(api, "/v1/track", {**call, "writeKey": "nope"}), 401)
    assert_segment_error(post(api, "/v1/track", call), 401)
    assert_segment_error(post(api, "/v1/batch", {"batch": [{**call, "type": "track"}]}), 401)
    for headers, body in (
        (basic("wk1"), call),  # Basic: the key is the user name, the password empty
        (basic("wk2", ""), call),
        ({}, {**call, "writeKey": "wk2"}),
    ):
        resp = post(api, "/v1/track", body, headers)
        assert (resp.status, resp.json()) == (200, {"success": True}), resp.body
    sources = {
        event.get("source")
        for name in partition_streams()
        for _, f in api.r.xrange(name)
        for event in entry_events(f)
    }
    assert sources == {"web", "ios"}


# -- what the API makes of a call ------------------------------------------------------


def test_batch_context_and_integrations_reach_every_call(live: Stack) -> None:
    t0 = ms(T0)
    user = f"ctx-{uuid.uuid4().hex[:8]}"

    def viewed(n: int, **extra: Any) -> dict[str, Any]:
        return {
            "type": "track",
            "userId": user,
            "event": "Viewed",
            "timestamp": iso(t0 + n),
            "messageId": f"ctx-{n}",
            **extra,
        }

    body = {
        "batch": [
            viewed(1),
            viewed(2, context={"ip": "192.0.2.1"}),
            viewed(3, context={"traits": {"tier": "gold"}}, integrations={"All": False}),
        ],
        "context": {"traits": {"country": "FR", "tier": "silver"}, "locale": "fr-FR"},
        "integrations": {"All": True, "Mixpanel": False},
    }
    resp = post(live, "/v1/batch", body, basic("wk1"))
    assert (resp.status, resp.json()) == (200, {"success": True}), resp.body
    first, second, third = (stored(live, f"ctx-{n}") for n in (1, 2, 3))
    assert first and second and third
    assert first["traits"] == second["traits"] == {"country": "FR", "tier": "silver"}
    assert third["traits"]["tier"] == "gold"  # the item's own context wins
    advance(live, t0 + 30_000, processed=3)
    doc = read_doc(live, f"user:{user}")
    assert doc is not None
    traits = {name: cell["v"] for name, cell in doc["traits"].items()}
    assert traits == {"country": "FR", "tier": "gold"}
    assert total(doc, "Viewed") == 3


def test_clock_skew_is_corrected_and_timestamp_used_as_is(api: Stack) -> None:
    received = ms(T0)
    skewed_client = received - 86_400_000  # the device's clock is a day behind
    body = {
        "batch": [
            {
                "type": "track",
                "userId": "skew",
                "event": "Skewed",
                "messageId": "skew-1",
                "originalTimestamp": iso(skewed_client - HOUR),
            },
            {
                "type": "track",
                "userId": "skew",
                "event": "Stamped",
                "messageId": "skew-2",
                "timestamp": iso(received - 30_000),
            },
            {"type": "track", "userId": "skew", "event": "Bare", "messageId": "skew-3"},
        ],
        "sentAt": iso(skewed_client),
    }
    resp = post(api, "/v1/batch", body, basic("wk1"))
    assert (resp.status, resp.json()) == (200, {"success": True}), resp.body
    skewed, stamped, bare = (stored(api, f"skew-{i}") for i in (1, 2, 3))
    assert skewed and stamped and bare
    assert skewed["receivedAt"] == received
    assert skewed["ts"] == received - HOUR
    assert stamped["ts"] == received - 30_000
    assert bare["ts"] == received


def identify(user: str, at: int, plan: str, message_id: str) -> dict[str, Any]:
    return {
        "type": "identify",
        "userId": user,
        "traits": {"plan": plan},
        "timestamp": iso(at),
        "messageId": message_id,
    }


def batch(stack: Stack, path: str, *calls: dict[str, Any]) -> None:
    resp = post(stack, path, {"batch": list(calls)}, basic("wk1"))
    assert (resp.status, resp.json()) == (200, {"success": True}), resp.body


def entered(stack: Stack, user: str) -> bool:
    return any(e["payload"].get("userId") == user for e in segment_events(stack))


def test_a_late_event_is_accepted_and_dropped_but_imported_it_is_applied(live: Stack) -> None:
    t0 = ms(T0)
    user, past_user = f"late-{uuid.uuid4().hex[:6]}", f"past-{uuid.uuid4().hex[:6]}"
    batch(live, "/v1/batch", identify(user, t0, "pro", "now-pro"))
    advance(live, t0 + 10_000, processed=1)

    # 3 hours old through /v1/batch: accepted, then dropped as late
    old = t0 - 3 * HOUR
    batch(live, "/v1/batch", identify(user, old, "free", "old-free"))
    wait_until(lambda: "old-free" in dropped_ids(live), message="the late event in dropped")

    # the same through /v1/import: applied (firstSeen moves back), LWW keeps the newer
    batch(
        live,
        "/v1/import",
        identify(user, old, "free", "imp-free"),
        identify(past_user, old, "pro", "imp-past"),
        {
            "type": "track",
            "userId": past_user,
            "event": "Purchased",
            "timestamp": iso(old + 1000),
            "messageId": "imp-track",
        },
    )
    live.wait_metric("processed", 4)
    live.wait_idle()
    doc = read_doc(live, f"user:{user}")
    assert doc is not None
    assert doc["firstSeen"] == iso_ms(old)
    assert doc["traits"]["plan"]["v"] == "pro"
    assert doc["traits"]["plan"]["eventId"] == "now-pro"
    past = read_doc(live, f"user:{past_user}")
    assert past is not None
    assert past["traits"]["plan"]["v"] == "pro"
    assert past["firstSeen"] == iso_ms(old) and total(past, "Purchased") == 1
    assert {"imp-free", "imp-past", "imp-track"}.isdisjoint(dropped_ids(live))


def test_an_import_produces_no_segment_event(live: Stack) -> None:
    t0 = ms(T0)
    past_user, marker = f"past-{uuid.uuid4().hex[:6]}", f"mk-{uuid.uuid4().hex[:6]}"
    old = t0 - 3 * HOUR
    batch(live, "/v1/import", identify(past_user, old, "pro", "imp-past"))
    live.wait_metric("processed", 1)
    live.wait_idle()
    # a live event afterwards: once its ENTER is out, an ENTER caused by the import
    # (evaluated in an earlier tick) would be out too
    batch(live, "/v1/batch", identify(marker, t0, "pro", "mk"))
    advance(live, t0 + 10_000, processed=2)
    wait_until(lambda: entered(live, marker), message="the marker's ENTER")
    users = [e["payload"].get("userId") for e in segment_events(live)]
    assert users == [marker]


def test_an_item_context_that_is_not_an_object_is_rejected_not_a_500(api: Stack) -> None:
    good = {"type": "track", "userId": "c-ok", "event": "E", "messageId": "c-ok"}
    body = {"batch": [{**good, "messageId": "c-bad", "context": 5}, good]}
    resp = post(api, "/v1/batch", body, basic("wk1"))
    assert resp.status == 200, resp.body
    assert [r["index"] for r in resp.json()["rejected"]] == [0]
    assert stored(api, "c-ok") and not stored(api, "c-bad")


def test_the_per_call_limit_counts_bytes_not_escapes(api: Stack) -> None:
    call = {
        "type": "track",
        "userId": "utf8",
        "event": "E",
        "messageId": "utf8-1",
        "timestamp": iso(ms(T0)),
        "properties": {"text": "é" * 9000},
    }
    raw = json.dumps(call, ensure_ascii=False).encode()
    assert len(raw) < 32 * 1024
    headers = {"Content-Type": "application/json", **basic("wk1")}
    single = api.request("POST", "/v1/track", raw, headers)
    assert (single.status, single.json()) == (200, {"success": True}), single.body
    body = json.dumps({"batch": [{**call, "messageId": "utf8-2"}]}, ensure_ascii=False)
    resp = api.request("POST", "/v1/batch", body.encode(), headers)
    assert (resp.status, resp.json()) == (200, {"success": True}), resp.body


def test_an_import_from_before_year_one_does_not_stop_the_worker(live: Stack) -> None:
    t0 = ms(T0)
    poison = {
        "type": "identify",
        "userId": "y0",
        "traits": {"plan": "x"},
        "timestamp": "0001-01-01T00:00:00+14:00",
        "messageId": "y0",
    }
    resp = post(live, "/v1/import", {"batch": [poison]}, basic("wk1"))
    assert resp.status in (200, 400), resp.body  # refused, or accepted and parked
    batch(live, "/v1/batch", identify("after-y0", t0, "pro", "after-y0"))
    live.set_clock(t0 + 10_000)
    wait_until(
        lambda: read_doc(live, "user:after-y0"), timeout=10, message="the next event applied"
    )

"""The console's JSON routes end to end (API and worker processes, real Redis, the test
clock): the debugger lists accepted events newest first and each filter narrows it,
``after`` polls for newer ones only; a refused call's reason and body (cut at 2 KiB)
are in the rejections, with its write key's source and never the key; the profile
explorer shows merges, trait cells, counter buckets and segment events; a preview
counts what a real backfill takes, and an invalid rule names its field; health shows
workers, their partitions and lag, and the history samples; every route needs the
admin token."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from cdp import keys
from cdp.rejections import BODY_LIMIT
from tests.support.stack import Response, Stack
from tests.support.values import ADMIN_TOKEN as TOKEN
from tests.support.values import T0, WRITE_KEY
from tests.support.wait import wait_until

pytestmark = pytest.mark.integration

ROUTES = [
    ("GET", "/cdp/console/events"),
    ("GET", "/cdp/console/rejections"),
    ("GET", "/cdp/console/profiles/user:u1"),
    ("POST", "/cdp/console/segments:preview"),
    ("GET", "/cdp/console/webhooks"),
    ("GET", "/cdp/console/health"),
]
BASIC = "Basic " + base64.b64encode(f"{WRITE_KEY}:".encode()).decode()


@pytest.fixture
def live(stack: Stack) -> Stack:
    stack.set_clock(T0)
    stack.start_api(admin_token=TOKEN, write_keys=f"{WRITE_KEY}=web")
    stack.start_worker(stream_retention="1h")  # the debugger reads what the streams keep
    return stack


def call(stack: Stack, method: str, path: str, payload: Any = None) -> Response:
    body = None if payload is None else json.dumps(payload).encode()
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    return stack.request(method, path, body, headers)


def ok(stack: Stack, path: str, payload: Any = None) -> Any:
    resp = call(stack, "GET" if payload is None else "POST", path, payload)
    assert resp.status == 200, (path, resp.status, resp.body)
    return resp.json()


def track(stack: Stack, payload: Any, path: str = "/v1/track") -> Response:
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    headers = {"Authorization": BASIC, "Content-Type": "application/json"}
    return stack.request("POST", path, body, headers)


def event_ids(page: dict[str, Any]) -> list[str]:
    return [item["event"]["eventId"] for item in page["events"]]


def test_every_console_route_needs_the_admin_token(live: Stack) -> None:
    for method, path in ROUTES:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": BASIC}):
            resp = live.request(method, path, b"{}", headers)
            assert resp.status == 401, (method, path, headers, resp.body)
            assert "admin token" in resp.json()["message"]


def test_the_debugger_lists_newest_first_filters_and_polls(live: Stack) -> None:
    live.send("e1", "2025-10-04T10:00:01Z", type="IDENTIFY", userId="u1", email="Ann@X.io")
    live.send("e2", "2025-10-04T10:00:02Z", type="TRACK", userId="u2", name="Clicked")
    assert track(live, {"userId": "u3", "event": "Bought", "messageId": "m3"}).status == 200
    page = ok(live, "/cdp/console/events")
    assert event_ids(page) == ["m3", "e2", "e1"]
    first = page["events"][0]
    assert first["event"]["source"] == "web" and first["event"]["type"] == "TRACK"
    partition, entry_id, index = first["id"].split("/")
    assert (int(partition), entry_id, int(index)) == (first["partition"], first["entryId"], 0)
    assert first["receivedAt"] == first["event"]["receivedAt"]
    filters = {
        "type=IDENTIFY": ["e1"],
        "type=track": ["m3", "e2"],
        "name=Clicked": ["e2"],
        "name=clicked": [],
        "source=web": ["m3"],
        "identifier=email:%20ann@x.io": ["e1"],
        "identifier=user:u2": ["e2"],
        "identifier=user:u2&name=Bought": [],
        "identifier=user:null": [],
        "limit=2": ["m3", "e2"],
    }
    for query, expected in filters.items():
        assert event_ids(ok(live, f"/cdp/console/events?{query}")) == expected, query
    # Polling: only what was accepted after the cursor, then nothing new.
    cursor = page["cursor"]
    assert ok(live, f"/cdp/console/events?after={cursor}") == {"events": [], "cursor": cursor}
    live.send("e4", "2025-10-04T10:00:04Z", type="TRACK", userId="u1", name="Clicked")
    newer = ok(live, f"/cdp/console/events?after={cursor}")
    assert event_ids(newer) == ["e4"]
    assert event_ids(ok(live, f"/cdp/console/events?after={newer['cursor']}")) == []
    for bad in ("after=nope", "after=W10=", "type=page", "identifier=u1", "limit=0"):
        resp = call(live, "GET", f"/cdp/console/events?{bad}")
        assert resp.status == 400, (bad, resp.body)
        assert resp.json()["status"] == "error"


def test_a_refused_call_is_in_the_rejections_with_its_body_cut(live: Stack) -> None:
    big = json.dumps({"eventId": "x", "ts": "not a time", "payload": {"pad": "é" * 2000}})
    refused = live.post("/cdp/ingest", big.encode())
    assert refused.status == 400
    assert (
        live.post(
            "/cdp/ingest",
            {
                "eventId": "ok",
                "ts": T0,
                "payload": {"type": "TRACK", "userId": "u1", "name": "Fine"},
            },
        ).status
        == 202
    )
    bad_call = track(live, {"event": "No one"})  # neither userId nor anonymousId
    assert bad_call.status == 400
    live.request("OPTIONS", "/v1/track")
    page = wait_until(
        lambda: len((p := ok(live, "/cdp/console/rejections"))["rejections"]) >= 2 and p,
        message="both refusals recorded",
    )
    newest, oldest = page["rejections"]
    assert (newest["route"], newest["method"], newest["status"]) == ("/v1/track", "POST", 400)
    assert newest["reason"] == bad_call.json()["message"]
    assert newest["source"] == "web" and not newest["truncated"]
    assert json.loads(newest["body"]) == {"event": "No one"}
    assert (oldest["route"], oldest["source"], oldest["status"]) == ("/cdp/ingest", None, 400)
    assert oldest["reason"] == refused.json()["message"]
    assert oldest["truncated"] is True
    assert oldest["body"] == big.encode()[:BODY_LIMIT].decode("utf-8", "replace")
    assert newest["at"] >= oldest["at"] > 0
    raw = json.dumps(live.r.xrange(keys.REJECTIONS))
    assert WRITE_KEY + ":" not in raw and BASIC not in raw  # never the write key
    # Polling and paging.
    assert ok(live, f"/cdp/console/rejections?after={newest['id']}")["rejections"] == []
    older = ok(live, f"/cdp/console/rejections?after={oldest['id']}")["rejections"]
    assert [r["id"] for r in older] == [newest["id"]]
    assert [r["id"] for r in ok(live, "/cdp/console/rejections?limit=1")["rejections"]] == [
        newest["id"]
    ]
    assert call(live, "GET", "/cdp/console/rejections?after=x").status == 400

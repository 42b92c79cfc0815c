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
    # The default stream-retention (0): the debugger's tap keeps what the streams trim.
    stack.start_worker(metrics_sample_interval="1s")
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
    newer = wait_until(
        lambda: (p := ok(live, f"/cdp/console/events?after={cursor}"))["events"] and p,
        message="e4 in the debugger's tap",
    )
    assert event_ids(newer) == ["e4"]
    assert event_ids(ok(live, f"/cdp/console/events?after={newer['cursor']}")) == []
    for bad in (
        "after=nope",
        "after=1-2.x",
        "after=1-2.3-4",
        "after=99999999999999999999-0",
        "type=page",
        "identifier=u1",
        "limit=0",
    ):
        resp = call(live, "GET", f"/cdp/console/events?{bad}")
        assert resp.status == 400, (bad, resp.body)
        assert resp.json()["status"] == "error"


def _order(item: dict[str, Any]) -> tuple[int, int, int, int]:
    ms, seq = item["entryId"].split("-")
    return int(ms), int(seq), item["partition"], int(item["id"].rsplit("/", 1)[1])


def poll_all(stack: Stack, cursor: str, query: str, expected: int) -> list[dict[str, Any]]:
    """Every item the ``after`` polls give from ``cursor`` (5 at most per answer), each
    answer checked newest first, until ``expected`` came and one more poll brings none."""
    seen: list[dict[str, Any]] = []

    def more() -> bool:
        nonlocal cursor
        page = ok(stack, f"/cdp/console/events?limit=5&after={cursor}{query}")
        assert len(page["events"]) <= 5
        assert page["events"] == sorted(page["events"], key=_order, reverse=True)
        seen.extend(page["events"])
        cursor = page["cursor"]
        return len(seen) >= expected and not page["events"]

    wait_until(more, message=f"{expected} events polled")
    return seen


def trimmed(stack: Stack) -> bool:
    return all(stack.r.xlen(keys.stream(p)) == 0 for p in range(stack.partitions))


def test_the_debugger_shows_every_event_accepted_while_open_at_stream_retention_0(
    live: Stack,
) -> None:
    cursor = ok(live, "/cdp/console/events")["cursor"]  # opening the debugger
    sent: list[str] = []
    for n in range(8):
        kind = {"type": "IDENTIFY"} if n % 3 == 0 else {"type": "TRACK", "name": f"N{n % 2}"}
        live.send(f"i{n}", f"2025-10-04T10:00:0{n}Z", userId=f"u{n}", **kind)
        sent.append(f"i{n}")
    for b in range(2):
        batch = [
            {"type": "track", "userId": f"u{n}", "event": "Batched", "messageId": f"b{b}-{n}"}
            for n in range(5)
        ] + [{"type": "identify", "userId": "u0", "messageId": f"b{b}-id"}]
        assert track(live, {"batch": batch}, "/v1/batch").status == 200
        sent += [call["messageId"] for call in batch]
    apply(live, "2025-10-04T10:05:00Z", len(sent))
    wait_until(lambda: trimmed(live), message="the workers to trim the partition streams")

    items = poll_all(live, cursor, "", len(sent))
    ids = [item["event"]["eventId"] for item in items]
    assert sorted(ids) == sorted(sent) and len(ids) == len(sent)  # each exactly once
    assert len({item["partition"] for item in items}) > 1
    assert {item["id"] for item in items} == {
        f"{i['partition']}/{i['entryId']}/{int(i['id'].rsplit('/', 1)[1])}" for i in items
    }
    batched = [i for i in items if i["event"]["eventId"].startswith("b1-")]
    assert {i["event"]["source"] for i in batched} == {"web"}
    # Filters apply to the polls too.
    identifies = poll_all(live, cursor, "&type=identify", 5)
    assert sorted(i["event"]["eventId"] for i in identifies) == ["b0-id", "b1-id", "i0", "i3", "i6"]
    of_u0 = poll_all(live, cursor, "&identifier=user:u0", 5)
    assert sorted(i["event"]["eventId"] for i in of_u0) == ["b0-0", "b0-id", "b1-0", "b1-id", "i0"]
    assert poll_all(live, cursor, "&name=N1&source=web", 0) == []
    # Without a cursor: the newest of the tap, the streams being empty.
    newest = ok(live, "/cdp/console/events?limit=200")["events"]
    assert newest == sorted(items, key=_order, reverse=True)


def tapped_ids(stack: Stack) -> list[str]:
    found = []
    for _, fields in stack.r.xrange(keys.DEBUGGER):
        found += [item[3]["eventId"] for item in json.loads(fields["t"])]
    return found


def test_the_tap_stops_once_the_watch_flag_is_gone(live: Stack) -> None:
    ok(live, "/cdp/console/events")
    assert live.r.pttl(keys.DEBUGGER_WATCH) > 0
    live.send("w1", "2025-10-04T10:00:01Z", type="TRACK", userId="u1", name="Seen")
    wait_until(lambda: "w1" in tapped_ids(live), message="w1 tapped")
    live.r.delete(keys.DEBUGGER_WATCH)  # as if it expired: nobody called for 30 s
    probes = iter(range(1000))
    counts: list[int] = []

    def stopped() -> bool:
        live.send(
            f"probe{next(probes)}", "2025-10-04T10:00:02Z", type="TRACK", userId="u2", name="P"
        )
        counts.append(len(tapped_ids(live)))
        return len(counts) >= 3 and counts[-1] == counts[-3]

    wait_until(stopped, interval=0.3, message="the tap to stop growing")
    for n in range(5):
        live.send(f"late{n}", "2025-10-04T10:00:03Z", type="TRACK", userId=f"u{n}", name="Late")
    apply(live, "2025-10-04T10:05:00Z", 1 + next(probes) + 5)
    assert not [i for i in tapped_ids(live) if i.startswith("late")]
    assert not live.r.exists(keys.DEBUGGER_WATCH)


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


def rejections_of(stack: Stack, count: int) -> list[dict[str, Any]]:
    """The newest ``count`` rejections, once that many are recorded."""
    page = wait_until(
        lambda: len((p := ok(stack, "/cdp/console/rejections"))["rejections"]) >= count and p,
        message=f"{count} refusals recorded",
    )
    return list(page["rejections"])


def test_write_keys_tried_are_redacted_from_the_rejections(live: Stack) -> None:
    plain = {"Content-Type": "text/plain"}
    wrong = {"writeKey": "wrong-key-1", "event": "E", "userId": "u1"}
    assert live.request("POST", "/v1/track", json.dumps(wrong).encode(), plain).status == 401
    batch = {
        "writeKey": WRITE_KEY,
        "batch": [{"writeKey": "item-key-2", "type": "track", "event": "E"}, 7],
    }
    assert live.request("POST", "/v1/batch", json.dumps(batch).encode(), plain).status == 400
    cut = b'{"writeKey": "cut-key-3", "event": "E", "userId": ' + b"1" * 3000
    assert live.request("POST", "/v1/track", cut, plain).status == 400
    assert live.request("GET", "/v1/projects/guessed-key-4/settings").status == 404
    long_route = "/v1/" + "x" * 500
    assert live.request("POST", long_route, b"{}", plain).status in (404, 405)
    by_route = {}
    for r in rejections_of(live, 5):
        by_route.setdefault(r["route"], []).append(r)
    (refused_key,) = (r for r in by_route["/v1/track"] if r["status"] == 401)
    assert json.loads(refused_key["body"]) == {**wrong, "writeKey": "[redacted]"}
    (shape,) = by_route["/v1/batch"]
    assert json.loads(shape["body"]) == {
        "writeKey": "[redacted]",
        "batch": [{"writeKey": "[redacted]", "type": "track", "event": "E"}, 7],
    }
    (not_json,) = (r for r in by_route["/v1/track"] if r["status"] == 400)
    assert not_json["body"].startswith('{"writeKey": "[redacted]", "event": "E"')
    assert "/v1/projects/[redacted]/settings" in by_route
    assert long_route[:200] in by_route
    raw = json.dumps(live.r.xrange(keys.REJECTIONS), default=repr)
    for key in (WRITE_KEY, "wrong-key-1", "item-key-2", "cut-key-3", "guessed-key-4"):
        assert key not in raw


def test_calls_a_batch_refused_one_by_one_are_in_the_rejections(live: Stack) -> None:
    good = {"type": "track", "event": "Fine", "userId": "u1", "messageId": "m-ok"}
    bad = {"type": "track", "event": "No one", "messageId": "m-bad", "writeKey": "k-5"}
    worse = {"type": "nonsense", "userId": "u2", "messageId": "m-worse"}
    resp = track(live, {"batch": [good, bad, worse]}, "/v1/batch")
    assert resp.status == 200
    answer = resp.json()
    assert [r["index"] for r in answer["rejected"]] == [1, 2]
    newest, oldest = rejections_of(live, 2)
    assert {r["route"] for r in (newest, oldest)} == {"/v1/batch"}
    assert {r["status"] for r in (newest, oldest)} == {400}
    assert {r["source"] for r in (newest, oldest)} == {"web"}
    recorded = {json.loads(r["body"])["messageId"]: r for r in (newest, oldest)}
    assert json.loads(recorded["m-bad"]["body"]) == {**bad, "writeKey": "[redacted]"}
    assert json.loads(recorded["m-worse"]["body"]) == worse
    reasons = {r["messageId"]: r["message"] for r in answer["rejected"]}
    assert {m: r["reason"] for m, r in recorded.items()} == reasons
    assert "k-5" not in json.dumps(live.r.xrange(keys.REJECTIONS), default=repr)


def apply(stack: Stack, clock: str, processed: int) -> None:
    """Move the clock past what was sent and wait until it is all applied."""
    stack.set_clock(clock)
    stack.wait_metric("processed", processed)
    stack.wait_idle()


def test_the_explorer_shows_merges_cells_buckets_and_segment_events(live: Stack) -> None:
    live.send("e1", "2025-10-04T10:00:01Z", type="TRACK", anonymousId="a1", name="Viewed")
    live.send("e2", "2025-10-04T10:00:02Z", type="IDENTIFY", userId="u1", traits={"plan": "pro"})
    apply(live, "2025-10-04T10:00:10Z", 2)
    wait_until(lambda: live.r.xlen(keys.SEGMENT_EVENTS) == 1, message="the pro_plan ENTER")
    live.send(
        "e3",
        "2025-10-04T10:01:03Z",
        type="IDENTIFY",
        userId="u1",
        anonymousId="a1",
        email="Ann@X.io",
        traits={"age": 41, "plan": None},
    )
    apply(live, "2025-10-04T10:01:10Z", 3)
    wait_until(lambda: live.r.xlen(keys.SEGMENT_EVENTS) == 2, message="the EXIT of the merge")
    view = ok(live, "/cdp/console/profiles/email:%20ANN@x.io")
    assert view["profile"] == ok(live, "/cdp/profiles/user:u1")
    survivor = view["profile"]["canonicalId"]
    (loser,) = view["profile"]["mergedFrom"]
    assert view["profile"]["identifiers"] == ["anon:a1", "email:ann@x.io", "user:u1"]
    assert view["traits"] == {"age": {"value": 41, "ts": 1_759_572_063_000, "eventId": "e3"}}
    assert view["tombstones"] == {"plan": {"ts": 1_759_572_063_000, "eventId": "e3"}}
    assert view["counters"]["Viewed"] == [[1_759_572_000_000, 1]]
    assert view["counters"]["$seen"] == [[1_759_572_000_000, 2], [1_759_572_060_000, 1]]
    (merge,) = view["merges"]
    assert (merge["status"], merge["survivor"], merge["merged"]) == ("merged", survivor, loser)
    assert merge["eventId"] == "e3" and merge["entryId"]
    transitions = [(e["segment"], e["transition"]) for e in view["segmentEvents"]]
    assert transitions == [("pro_plan", "EXIT"), ("pro_plan", "ENTER")]
    enter = view["segmentEvents"][1]
    assert enter["e"]["payload"]["name"] == "pro_plan ENTER"  # the JSON field decoded
    # Any identifier, and the merged-away id, show the same profile.
    assert ok(live, f"/cdp/console/profiles/{loser}")["profile"]["canonicalId"] == survivor
    assert call(live, "GET", "/cdp/console/profiles/user:nobody").status == 404
    assert call(live, "GET", "/cdp/console/profiles/phone:1").status == 400


SENIORS = {
    "all": [{"trait": "age", "op": "gte", "value": 30}, {"count": {"within": "1d", "gte": 1}}]
}


def test_a_preview_counts_what_a_backfill_takes(live: Stack) -> None:
    for n, age in enumerate([20, 30, 45, 60, 12]):
        live.send(
            f"i{n}", "2025-10-04T10:00:01Z", type="IDENTIFY", userId=f"u{n}", traits={"age": age}
        )
    live.send("t1", "2025-10-04T10:00:02Z", type="TRACK", userId="u2", name="Clicked")
    live.send("t2", "2025-10-04T10:00:02Z", type="TRACK", userId="u3", name="Clicked")
    live.send("t3", "2025-10-04T10:00:02Z", type="TRACK", userId="u0", name="Clicked")
    apply(live, "2025-10-04T10:00:10Z", 8)
    body = {"name": "seniors", "rule": SENIORS, "description": "active, 30 and over"}
    counted = ok(live, "/cdp/console/segments:preview", body)
    assert counted == {"valid": True, "matches": 2, "scanned": 5, "total": 5, "capped": False}
    put = call(live, "PUT", "/cdp/segments/seniors", {"rule": SENIORS})
    assert put.status == 201, put.body
    wait_until(
        lambda: ok(live, "/cdp/segments/seniors").get("backfill", {}).get("state") == "done",
        message="the backfill to finish",
    )
    assert ok(live, "/cdp/segments/seniors")["members"] == counted["matches"]
    # Invalid: the field of the offending node, as PUT's 400 lists it too.
    broken = {
        "all": [{"trait": "age", "op": "gte", "value": 30}, {"count": {"within": "7q", "gte": 1}}]
    }
    invalid = ok(live, "/cdp/console/segments:preview", {"name": "x", "rule": broken})
    assert invalid["valid"] is False
    (error,) = invalid["errors"]
    assert (
        error["field"] == "rule.all[1].count.within"
        and "'7q' is not a duration" in error["message"]
    )
    refused = call(live, "PUT", "/cdp/segments/x", {"rule": broken})
    assert refused.status == 400
    assert refused.json()["errors"] == invalid["errors"]
    assert refused.json()["message"].startswith("invalid segment definition: $.rule.all[1]")
    for payload, field in (
        ({"name": "bad name!", "rule": SENIORS}, "name"),
        ({"rule": SENIORS}, "name"),
        ({"name": "x", "rule": SENIORS, "description": 3}, "description"),
        ({"name": "x"}, ""),
    ):
        answer = ok(live, "/cdp/console/segments:preview", payload)
        assert answer["valid"] is False and answer["errors"][0]["field"] == field, payload


def test_webhooks_show_their_state_and_dead_letters_without_secrets(live: Stack) -> None:
    created = call(live, "POST", "/cdp/webhooks", {"url": "http://127.0.0.1:9/hook"})
    assert created.status == 201, created.body
    secret = created.json()["secret"]
    sub = created.json()["id"]
    live.r.hset(keys.webhook_state(sub), mapping={"delivered": 3, "lastError": "timeout"})
    live.r.xadd(keys.WEBHOOKS_DEAD, {"subscription": sub, "e": '{"eventId": "s1"}', "attempts": 9})
    page = ok(live, "/cdp/console/webhooks")
    (hook,) = page["webhooks"]
    assert (hook["id"], hook["url"], hook["segments"]) == (sub, "http://127.0.0.1:9/hook", None)
    assert hook["state"]["delivered"] == 3 and hook["state"]["lastError"] == "timeout"
    assert hook["state"]["attempts"] == 0 and hook["state"]["dead"] == 0
    (dead,) = page["dead"]
    assert dead["e"] == {"eventId": "s1"} and dead["subscription"] == sub
    assert secret not in json.dumps(page)


def test_health_shows_workers_partitions_lag_and_history(live: Stack) -> None:
    wait_until(lambda: len(ok(live, "/cdp/console/health")["workers"]) == 1, message="the worker")
    wait_until(
        lambda: (
            sum(len(w["partitions"]) for w in ok(live, "/cdp/console/health")["workers"])
            == live.partitions
        ),
        message="every lease held",
    )
    live.send("e1", "2025-10-04T10:00:01Z", type="TRACK", userId="u1", name="Clicked")
    apply(live, "2025-10-04T10:00:10Z", 1)
    # The worker holding the sweeper lease samples the totals into the history.
    wait_until(
        lambda: any(
            h["counters"].get("processed") == 1 for h in ok(live, "/cdp/console/health")["history"]
        ),
        message="a history sample with the applied event",
    )
    health = ok(live, "/cdp/console/health")
    (worker,) = health["workers"]
    assert sorted(worker["partitions"]) == list(range(live.partitions))
    assert [p["partition"] for p in health["partitions"]] == list(range(live.partitions))
    assert {p["holder"] for p in health["partitions"]} == {worker["id"]}
    assert all(p["lag"] == 0 and p["pending"] == 0 for p in health["partitions"])
    assert health["counters"]["accepted"] == 1 and health["counters"]["processed"] == 1
    assert health["streams"] == {"dropped": 0, "dead": 0, "webhooksDead": 0, "rejections": 0}
    history = health["history"]
    assert [h["at"] for h in history] == sorted(h["at"] for h in history)
    assert all(health["now"] - 3_600_000 <= h["at"] <= health["now"] for h in history)
    assert history[-1]["counters"]["accepted"] == 1 and history[-1]["segments"] is not None
    # A partition whose worker is gone shows its lag.
    live.kill(live.processes[1])
    live.send("e2", "2025-10-04T10:00:11Z", type="TRACK", userId="u1", name="Clicked")
    wait_until(
        lambda: sum(p["lag"] for p in ok(live, "/cdp/console/health")["partitions"]) == 1,
        message="the lag of the unread event",
    )

"""Inputs and sequences a review found hard to take: each must be a clear 4xx (never a
5xx), and a segment defined again must never reuse a transition's eventId."""

from __future__ import annotations

import json

import pytest

from cdp import keys
from tests.support.stack import Stack
from tests.support.values import ADMIN_TOKEN as TOKEN
from tests.support.values import T0, WRITE_KEY
from tests.support.wait import wait_until

pytestmark = pytest.mark.integration


@pytest.fixture
def api(stack: Stack) -> Stack:
    stack.set_clock(T0)
    stack.start_api(write_keys=f"{WRITE_KEY}=web", admin_token=TOKEN)
    return stack


def v1(stack: Stack, path: str, body: bytes) -> tuple[int, dict[str, object]]:
    import base64

    auth = base64.b64encode(f"{WRITE_KEY}:".encode()).decode()
    resp = stack.request(
        "POST", path, body, {"Authorization": f"Basic {auth}", "Content-Type": "application/json"}
    )
    return resp.status, resp.json()


def test_deeply_nested_json_is_a_400(api: Stack) -> None:
    deep = b'{"a":' * 3000 + b"1" + b"}" * 3000
    assert api.post("/cdp/ingest", deep).status == 400
    status, body = v1(api, "/v1/track", deep)
    assert status == 400 and "nested" in str(body["message"])
    # Both refusals are in the console's rejections, their bodies cut.
    wait_until(lambda: api.r.xlen(keys.REJECTIONS) == 2, message="the two refusals recorded")
    for _, fields in api.r.xrange(keys.REJECTIONS):
        assert fields["status"] == "400" and fields["truncated"] == "1", fields


def test_a_lone_surrogate_is_a_400_and_rejects_only_its_call(api: Stack) -> None:
    bad = b'{"userId": "u1", "traits": {"name": "\\ud83d"}, "messageId": "m1"}'
    status, body = v1(api, "/v1/identify", bad)
    assert status == 400 and "surrogate" in str(body["message"])
    batch = (
        b'{"batch": [{"type": "identify", "userId": "u2", "messageId": "ok"},'
        b' {"type": "identify", "userId": "u3", "traits": {"n": "\\ud83d"}}]}'
    )
    status, body = v1(api, "/v1/batch", batch)
    assert status == 200
    assert [r["index"] for r in body["rejected"]] == [1]  # type: ignore[union-attr]


def test_nan_and_infinite_numbers_are_a_400(api: Stack) -> None:
    for raw in (
        b'{"userId": "u1", "traits": {"x": NaN}}',
        b'{"userId": "u1", "traits": {"x": 1e400}}',
    ):
        status, _ = v1(api, "/v1/identify", raw)
        assert status == 400


def test_a_batch_context_counts_toward_each_calls_size(api: Stack) -> None:
    big = {"traits": {"blob": "x" * 20_000}}
    calls = [{"type": "track", "userId": f"u{i}", "event": "E"} for i in range(2)]
    status, body = v1(api, "/v1/batch", json.dumps({"batch": calls, "context": big}).encode())
    assert status == 200  # 20 KB of shared context fits in 32 KB per call
    big = {"traits": {"blob": "x" * 40_000}}
    status, body = v1(api, "/v1/batch", json.dumps({"batch": calls, "context": big}).encode())
    assert status == 200  # answered like Segment: every call listed as rejected
    assert {r["code"] for r in body["rejected"]} == {"request_too_large"}  # type: ignore[union-attr]
    assert len(body["rejected"]) == 2  # type: ignore[arg-type]


def test_too_many_traits_is_a_400(api: Stack) -> None:
    traits = {f"t{i}": i for i in range(1001)}
    resp = api.post(
        "/cdp/ingest",
        {
            "eventId": "e",
            "ts": T0,
            "payload": {"type": "IDENTIFY", "userId": "u", "traits": traits},
        },
    )
    assert resp.status == 400 and "1000" in resp.json()["message"]


def test_a_segment_defined_again_continues_its_event_ids(api: Stack) -> None:
    api.start_worker()
    auth = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    rule = json.dumps({"rule": {"trait": "plan", "op": "eq", "value": "gold"}}).encode()
    api.send("e1", "2025-10-04T10:00:01Z", type="IDENTIFY", userId="u1", traits={"plan": "gold"})
    api.set_clock("2025-10-04T10:00:10Z")
    api.wait_metric("processed", 1)
    assert api.request("PUT", "/cdp/segments/gold", rule, auth).status == 201

    def gold_ids() -> list[str]:
        return [
            f["eventId"] for _, f in api.r.xrange(keys.SEGMENT_EVENTS) if f["segment"] == "gold"
        ]

    wait_until(lambda: gold_ids() == ["seg:gold:p1:1"], message="the first ENTER")
    assert api.request("DELETE", "/cdp/segments/gold", None, auth).status == 204
    assert api.request("PUT", "/cdp/segments/gold", rule, auth).status == 201
    wait_until(lambda: len(gold_ids()) == 2, message="the ENTER after the redefinition")
    assert gold_ids() == ["seg:gold:p1:1", "seg:gold:p1:2"]

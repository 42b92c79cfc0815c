"""POST /cdp/ingest against the real API process: every validation rule answers 400 (413
for size) with a message naming the field, accepted events are on a partition stream
before the 202, and an unreachable Redis is a 503 with Retry-After."""

from __future__ import annotations

import json
import zlib

import pytest

from cdp import keys
from cdp.embedded import free_port
from tests.support.stack import Stack
from tests.support.wait import wait_until

pytestmark = pytest.mark.integration

NOW = "2025-10-04T10:00:00Z"


def event(**overrides: object) -> dict[str, object]:
    body: dict[str, object] = {
        "eventId": "evt-1",
        "ts": NOW,
        "payload": {"type": "IDENTIFY", "userId": "u1", "traits": {"plan": "pro"}},
    }
    payload = dict(body["payload"])  # type: ignore[call-overload]
    for key, value in overrides.items():
        if key.startswith("payload_"):
            name = key.removeprefix("payload_")
            if value is None:
                payload.pop(name, None)
            else:
                payload[name] = value
        elif value is None:
            body.pop(key, None)
        else:
            body[key] = value
    body["payload"] = payload
    return body


@pytest.fixture
def api(stack: Stack) -> Stack:
    stack.set_clock(NOW)
    stack.start_api()
    return stack


REJECTIONS = [
    ("missing eventId", event(eventId=None), "eventId"),
    ("empty eventId", event(eventId=""), "eventId"),
    ("blank eventId", event(eventId="   "), "eventId"),
    ("eventId too long", event(eventId="x" * 129), "eventId"),
    ("eventId not a string", event(eventId=12), "eventId"),
    ("no identifier", event(payload_userId=None), "userId"),
    ("only blank identifiers", event(payload_userId=" ", payload_email=""), "userId"),
    (
        "placeholder identifiers only",
        event(payload_userId="null", payload_anonymousId="undefined"),
        "placeholder",
    ),
    ("TRACK without name", event(payload_type="TRACK"), "name"),
    ("TRACK with empty name", event(payload_type="TRACK", payload_name=""), "name"),
    ("ALIAS without anonymousId", event(payload_type="ALIAS"), "anonymousId"),
    (
        "ALIAS without userId",
        event(payload_type="ALIAS", payload_userId=None, payload_anonymousId="a1"),
        "userId",
    ),
    ("unknown type", event(payload_type="PAGEVIEW"), "type"),
    ("missing type", event(payload_type=None), "type"),
    ("missing ts", event(ts=None), "ts"),
    ("naive ts", event(ts="2025-10-04T10:00:00"), "ts"),
    ("ts not a date", event(ts="yesterday"), "ts"),
    ("ts in the future", event(ts="2025-10-04T10:06:00Z"), "ts"),
    ("traits not an object", event(payload_traits=["plan", "pro"]), "traits"),
    ("properties not an object", event(payload_properties="x"), "properties"),
    ("missing payload", event(payload=None) | {"payload": None}, "payload"),
]


@pytest.mark.parametrize(("case", "body", "field"), REJECTIONS, ids=[c[0] for c in REJECTIONS])
def test_each_rule_answers_400_naming_the_field(
    api: Stack, case: str, body: object, field: str
) -> None:
    resp = api.post("/cdp/ingest", body)
    assert resp.status == 400, (case, resp.body)
    answer = resp.json()
    assert answer["status"] == "error"
    assert field in answer["message"], answer["message"]


@pytest.mark.parametrize("raw", [b"", b"{", b"[1,2]", b"null", b"\xff\xfe"])
def test_bodies_that_are_not_one_json_object_answer_400(api: Stack, raw: bytes) -> None:
    resp = api.post("/cdp/ingest", raw)
    assert resp.status == 400, resp.body
    assert resp.json()["status"] == "error"


def test_an_event_over_32_kb_answers_413(api: Stack) -> None:
    body = event(payload_traits={"blob": "x" * 33_000})
    resp = api.post("/cdp/ingest", body)
    assert resp.status == 413
    assert "32768" in resp.json()["message"]


def test_a_future_ts_within_the_allowed_skew_is_accepted(api: Stack) -> None:
    assert api.post("/cdp/ingest", event(ts="2025-10-04T10:04:59Z")).status == 202


def test_accepted_event_is_on_its_partition_stream_before_the_202(api: Stack) -> None:
    resp = api.post("/cdp/ingest", event(payload_email="A@B.c"))
    assert resp.status == 202
    assert resp.json() == {"status": "accepted", "eventId": "evt-1"}
    partition = zlib.crc32(b"user:u1") % api.partitions
    (entry,) = api.r.xrange(keys.stream(partition))
    stored = json.loads(entry[1]["e"])
    assert stored["eventId"] == "evt-1"
    assert stored["ts"] == 1759572000000
    assert stored["receivedAt"] == 1759572000000
    assert stored["email"] == "A@B.c"
    assert api.metric("accepted") == 1


def test_unknown_routes_and_methods_answer_json_errors(api: Stack) -> None:
    missing = api.get("/cdp/nowhere")
    assert missing.status == 404 and missing.json()["status"] == "error"
    wrong = api.get("/cdp/ingest")
    assert wrong.status == 405 and wrong.json()["status"] == "error"


def test_metrics_are_in_prometheus_text_format(api: Stack) -> None:
    api.post("/cdp/ingest", event())
    text = api.get("/metrics").body.decode()
    for name in ("buffered", "processed_total", "late_total", "dropped_total", "dedup_hits_total"):
        assert f"\ncdp_events_{name} " in text
    assert "cdp_events_accepted_total 1" in text


def test_redis_unreachable_answers_503_with_retry_after(stack: Stack) -> None:
    stack.redis_url = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    port = free_port()
    stack.api_port = port
    stack._spawn(["api", "--port", str(port)], stack.env(clock="system"))
    wait_until(lambda: _answers(stack), timeout=20, message="the API to listen")
    resp = stack.post("/cdp/ingest", event(ts="2025-10-04T10:00:00Z"))
    assert resp.status == 503
    assert resp.headers.get("Retry-After") == "1"
    assert resp.json()["status"] == "error"
    assert stack.get("/readyz").status == 503
    assert stack.get("/healthz").status == 200


def _answers(stack: Stack) -> bool:
    try:
        return stack.get("/healthz").status == 200
    except OSError:
        return False

"""Webhook deliveries end to end: a real HTTP receiver on a local port, the API and
worker processes, and the test clock driving the dispatcher's backoff. Every segment
event reaches a subscription signed, in stream order, retried with a stable delivery
id until a 2xx and never after it; a hopeless event is dead-lettered without blocking
the ones behind it; a killed dispatcher resumes from the stored cursor."""

from __future__ import annotations

import hashlib
import hmac
import json
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from standardwebhooks import Webhook, WebhookVerificationError

from cdp import keys
from tests.support.stack import Response, Stack
from tests.support.values import ADMIN_TOKEN as TOKEN
from tests.support.values import T0, iso, ms
from tests.support.wait import wait_until

pytestmark = pytest.mark.integration

SECRET = "0123456789abcdef0123456789abcdef"  # 32 characters, a plain (pre-whsec_) secret


# -- the receiver ----------------------------------------------------------------------


@dataclass(frozen=True)
class Delivery:
    path: str
    headers: dict[str, str]  # lower-case names
    body: bytes
    status: int  # what the receiver answered

    @property
    def delivery_id(self) -> str:
        return self.headers.get("x-cdp-delivery", "")

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300


class Receiver:
    """An HTTP server in a thread that records every POST and answers ``policy(path, n)``,
    n being the number of requests to that path before this one."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.deliveries: list[Delivery] = []
        self.policy: Callable[[str, int], int] = lambda path, n: 200
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                headers = {k.lower(): v for k, v in self.headers.items()}
                with receiver.lock:
                    n = sum(1 for d in receiver.deliveries if d.path == self.path)
                    status = receiver.policy(self.path, n)
                    receiver.deliveries.append(Delivery(self.path, headers, body, status))
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}{path}"

    def received(self, path: str) -> list[Delivery]:
        with self.lock:
            return [d for d in self.deliveries if d.path == path]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    rec = Receiver()
    rec.thread.start()
    yield rec
    rec.server.shutdown()
    rec.server.server_close()
    rec.thread.join(timeout=5)


# -- helpers ---------------------------------------------------------------------------


def admin(stack: Stack, method: str, path: str, payload: Any = None) -> Response:
    body = None
    if payload is not None:
        body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    return stack.request(method, path, body, headers)


def subscribe(stack: Stack, url: str, **extra: Any) -> str:
    resp = admin(stack, "POST", "/cdp/webhooks", {"url": url, "secret": SECRET, **extra})
    assert resp.status == 201, resp.body
    sub = resp.json()
    assert sub["secret"] == SECRET
    return str(sub["id"])


@pytest.fixture
def live(stack: Stack) -> Stack:
    stack.set_clock(T0)
    stack.start_api(admin_token=TOKEN)
    stack.start_worker("w1", webhook_backoff="1s")
    return stack


def clock(stack: Stack) -> int:
    return int(stack.r.get(keys.CLOCK))


def identify(stack: Stack, at_ms: int, plans: dict[str, str]) -> None:
    """IDENTIFY each user with a plan at ``at_ms``, then move the clock past the window."""
    for user, plan in plans.items():
        event_id = f"{user}-{plan}-{at_ms}"
        stack.send(event_id, iso(at_ms), type="IDENTIFY", userId=user, traits={"plan": plan})
    stack.set_clock(max(clock(stack), at_ms + 6_000))


def stream_entries(stack: Stack) -> list[tuple[str, str, str]]:
    """(entry id, eventId, event JSON) of cdp:segment-events, in order."""
    return [(i, f["eventId"], f["e"]) for i, f in stack.r.xrange(keys.SEGMENT_EVENTS)]


def wait_stream(stack: Stack, n: int) -> list[tuple[str, str, str]]:
    wait_until(lambda: stack.r.xlen(keys.SEGMENT_EVENTS) >= n, message=f"{n} segment events")
    return stream_entries(stack)


def drive(stack: Stack, subs: list[str], done: Callable[[], bool], message: str) -> None:
    """Move the test clock to each pending retry of ``subs`` until ``done()``."""

    def step() -> bool:
        # Read the retry time before looking at done(): nothing is attempted before the
        # clock reaches it, so done() cannot turn true in between and the clock never
        # moves one retry too far.
        now = clock(stack)
        due = [int(stack.r.hget(keys.webhook_state(s), "nextAt") or 0) for s in subs]
        if done():
            return True
        later = [d for d in due if d > now]
        if later:
            stack.set_clock(min(later))
        return False

    wait_until(step, timeout=20, message=message)


def acknowledged(receiver: Receiver, path: str) -> list[str]:
    return [d.delivery_id for d in receiver.received(path) if d.ok]


def verify(delivery: Delivery, secret: str = SECRET) -> None:
    timestamp = delivery.headers["x-cdp-timestamp"]
    assert timestamp.isdigit()
    expected = (
        "v1="
        + hmac.new(
            secret.encode(), f"{timestamp}.".encode() + delivery.body, hashlib.sha256
        ).hexdigest()
    )
    assert hmac.compare_digest(expected, delivery.headers["x-cdp-signature"]), delivery
    assert delivery.headers["content-type"].startswith("application/json")


def assert_in_order_and_once(
    deliveries: list[Delivery], sub_id: str, entries: list[tuple[str, str, str]]
) -> None:
    """Each entry acknowledged exactly once, in stream order, never sent after its 2xx,
    and no entry attempted before the one ahead of it was acknowledged."""
    position = {f"{sub_id}:{event_id}": n for n, (_, event_id, _) in enumerate(entries)}
    bodies = {f"{sub_id}:{event_id}": body for _, event_id, body in entries}
    assert all(d.delivery_id in position for d in deliveries), [d.delivery_id for d in deliveries]
    order = [position[d.delivery_id] for d in deliveries]
    assert order == sorted(order), order  # strictly one event at a time, in order
    assert [position[d.delivery_id] for d in deliveries if d.ok] == list(range(len(entries)))
    for n, d in enumerate(deliveries):
        if d.ok:
            assert all(later.delivery_id != d.delivery_id for later in deliveries[n + 1 :])
        assert d.body == bodies[d.delivery_id].encode()
        verify(d)


def standard_verify(delivery: Delivery, secret: str | bytes) -> Any:
    """What a receiver using the ``standardwebhooks`` library does (it checks the
    timestamp against the real time: these deliveries must be stamped now)."""
    return Webhook(secret).verify(delivery.body, delivery.headers)


# -- tests -----------------------------------------------------------------------------


def test_subscriptions_are_validated_listed_and_deleted(stack: Stack) -> None:
    stack.start_api(admin_token=TOKEN)
    bad = [
        ({"url": "ftp://example.com/hook"}, "url"),
        ({"url": "not a url"}, "url"),
        ({"secret": SECRET}, "url"),
        ({"url": "http://127.0.0.1:9/h", "secret": "short"}, "secret"),
        ({"url": "http://127.0.0.1:9/h", "secret": 12345678901234567890}, "secret"),
        ({"url": "http://127.0.0.1:9/h", "segments": "pro_plan"}, "segments"),
        ({"url": "http://127.0.0.1:9/h", "segments": [""]}, "segments"),
        ({"url": "http://127.0.0.1:9/h", "events": ["x"]}, "events"),
        ([], "url"),
        (b"{not json", "JSON"),
    ]
    for body, fragment in bad:
        resp = admin(stack, "POST", "/cdp/webhooks", body)
        assert resp.status == 400, (body, resp.status, resp.body)
        assert fragment in resp.json()["message"], (body, resp.json())
    assert stack.r.hgetall(keys.WEBHOOKS) == {}

    # A subscription starts after the newest segment event that exists when it is made.
    before = stack.r.xadd(keys.SEGMENT_EVENTS, {"eventId": "x", "segment": "pro_plan", "e": "{}"})
    resp = admin(stack, "POST", "/cdp/webhooks", {"url": "https://example.com/h"})
    assert resp.status == 201, resp.body
    generated = resp.json()
    assert len(generated["secret"]) >= 16 and generated["segments"] is None
    filtered = subscribe(stack, "http://127.0.0.1:9/h", segments=["pro_plan"])

    listed = {w["id"]: w for w in admin(stack, "GET", "/cdp/webhooks").json()["webhooks"]}
    assert set(listed) == {generated["id"], filtered}
    assert listed[filtered]["segments"] == ["pro_plan"]
    assert SECRET not in json.dumps(listed)
    assert generated["secret"] not in json.dumps(listed)
    assert listed[filtered]["delivery"]["cursor"] == before

    assert admin(stack, "DELETE", f"/cdp/webhooks/{filtered}").status == 204
    assert admin(stack, "DELETE", f"/cdp/webhooks/{filtered}").status == 404
    assert not stack.r.exists(keys.webhook_state(filtered))
    listed = admin(stack, "GET", "/cdp/webhooks").json()["webhooks"]
    assert [w["id"] for w in listed] == [generated["id"]]


def test_every_event_is_delivered_signed_in_order_retried_until_2xx(
    live: Stack, receiver: Receiver
) -> None:
    receiver.policy = lambda path, n: 500 if n < 3 else 200
    sub = subscribe(live, receiver.url("/hook"))
    t0 = ms(T0)
    identify(live, t0, {u: "pro" for u in ("u1", "u2", "u3", "u4")})
    wait_stream(live, 4)
    identify(live, t0 + 7_000, {"u1": "free", "u2": "free"})
    entries = wait_stream(live, 6)
    assert [json.loads(e)["payload"]["name"] for _, _, e in entries].count("pro_plan EXIT") == 2

    expected = [f"{sub}:{event_id}" for _, event_id, _ in entries]
    drive(
        live,
        [sub],
        lambda: acknowledged(receiver, "/hook") == expected,
        "every segment event acknowledged",
    )

    # A sentinel transition: anything re-sent would come before it.
    identify(live, clock(live), {"u3": "free"})
    entries = wait_stream(live, 7)
    expected = [f"{sub}:{event_id}" for _, event_id, _ in entries]
    drive(live, [sub], lambda: acknowledged(receiver, "/hook") == expected, "the sentinel")

    deliveries = receiver.received("/hook")
    assert_in_order_and_once(deliveries, sub, entries)
    first = [d for d in deliveries if d.delivery_id == expected[0]]
    assert [d.status for d in first] == [500, 500, 500, 200]  # same delivery id each time
    times = [int(d.headers["x-cdp-timestamp"]) for d in first]
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    assert all(gap >= 2**n for n, gap in enumerate(gaps)), times  # 1 s, 2 s, 4 s backoff
    assert len(deliveries) == len(entries) + 3

    wait_until(
        lambda: live.r.hget(keys.webhook_state(sub), "cursor") == entries[-1][0],
        message="the cursor past the last event",
    )
    (listed,) = admin(live, "GET", "/cdp/webhooks").json()["webhooks"]
    assert listed["delivery"]["cursor"] == entries[-1][0]
    assert listed["delivery"]["delivered"] == str(len(entries))
    assert listed["delivery"]["attempts"] == "0"
    assert live.r.xlen(keys.WEBHOOKS_DEAD) == 0


def test_a_filtered_subscription_receives_only_its_segments(
    live: Stack, receiver: Receiver
) -> None:
    everything = subscribe(live, receiver.url("/all"))
    pro_only = subscribe(live, receiver.url("/pro"), segments=["pro_plan"])
    t0 = ms(T0)
    for i in range(5):  # u1 becomes a power user
        live.send(f"t{i}", iso(t0 + i), type="TRACK", userId="u1", name="Clicked")
    identify(live, t0, {"u2": "pro"})
    wait_stream(live, 2)
    identify(live, t0 + 7_000, {"u2": "free", "u3": "pro"})
    entries = wait_stream(live, 4)
    segments = [json.loads(e)["payload"]["properties"]["segment"] for _, _, e in entries]
    assert sorted(segments) == ["power_user", "pro_plan", "pro_plan", "pro_plan"]

    last = entries[-1][0]
    wait_until(
        lambda: all(
            live.r.hget(keys.webhook_state(s), "cursor") == last for s in (everything, pro_only)
        ),
        message="both subscriptions past the last event",
    )
    assert_in_order_and_once(receiver.received("/all"), everything, entries)
    pro_entries = [e for e, s in zip(entries, segments, strict=True) if s == "pro_plan"]
    assert_in_order_and_once(receiver.received("/pro"), pro_only, pro_entries)


def test_an_event_failing_for_retry_for_is_dead_lettered_and_the_next_one_delivered(
    stack: Stack, receiver: Receiver
) -> None:
    stack.set_clock(T0)
    stack.start_api(admin_token=TOKEN)
    stack.start_worker("w1", webhook_backoff="1s", webhook_retry_for="10m")
    healthy = threading.Event()
    receiver.policy = lambda path, n: 200 if healthy.is_set() else 500
    sub = subscribe(stack, receiver.url("/hook"))
    state_key = keys.webhook_state(sub)
    t0 = ms(T0)
    identify(stack, t0, {"u1": "pro"})
    ((first_entry, first_id, first_body),) = wait_stream(stack, 1)
    first = f"{sub}:{first_id}"
    wait_until(lambda: receiver.received("/hook"), message="a first attempt")
    identify(stack, t0 + 7_000, {"u2": "pro"})
    entries = wait_stream(stack, 2)
    second = f"{sub}:{entries[1][1]}"

    # Just before retry-for is up, a failure is retried again, not given up.
    failed_since = int(wait_until(lambda: stack.r.hget(state_key, "firstFailedAt")))
    almost = stack.set_clock(failed_since + 600_000 - 1)
    wait_until(
        lambda: int(stack.r.hget(state_key, "nextAt") or 0) > almost,
        message="a retry scheduled after an attempt 1 ms before retry-for",
    )
    assert stack.r.hget(state_key, "firstFailedAt") == str(failed_since)
    assert stack.r.xlen(keys.WEBHOOKS_DEAD) == 0

    # The next failure is past retry-for: dead-lettered, and the subscription moves on.
    drive(stack, [sub], lambda: stack.r.xlen(keys.WEBHOOKS_DEAD) == 1, "a dead letter")
    ((_, dead),) = stack.r.xrange(keys.WEBHOOKS_DEAD)
    tried = [d for d in receiver.received("/hook") if d.delivery_id == first]
    assert dead == {
        "subscription": sub,
        "entryId": first_entry,
        "eventId": first_id,
        "e": first_body,
        "attempts": str(len(tried)),
        "error": "HTTP 500",
    }
    assert all(d.status == 500 for d in tried)
    wait_until(
        lambda: any(d.delivery_id == second for d in receiver.received("/hook")),
        message="the next event attempted while the receiver still fails",
    )
    healthy.set()
    drive(stack, [sub], lambda: second in acknowledged(receiver, "/hook"), "the next event")
    deliveries = receiver.received("/hook")
    assert [d.delivery_id for d in deliveries] == [first] * len(tried) + [second] * (
        len(deliveries) - len(tried)
    )
    assert acknowledged(receiver, "/hook") == [second]
    for d in deliveries:
        verify(d)
    wait_until(lambda: stack.r.hget(state_key, "cursor") == entries[1][0])
    state = stack.r.hgetall(state_key)
    assert (state["dead"], state["delivered"], state["attempts"]) == ("1", "1", "0")
    # GET /metrics reads the same counts (every failure but the given-up one retried)
    failures = sum(d.status == 500 for d in deliveries)
    assert webhook_metrics(stack, sub) == {
        "cdp_webhook_deliveries": 1,
        "cdp_webhook_retries": failures - 1,
        "cdp_webhook_dead_letters": 1,
    }


def webhook_metrics(stack: Stack, sub: str) -> dict[str, float]:
    text = stack.get("/metrics").body.decode()
    return {
        family.name: sample.value
        for family in text_string_to_metric_families(text)
        if family.name.startswith("cdp_webhook_") and family.type == "counter"
        for sample in family.samples
        if sample.labels == {"subscription": sub}
    }


def test_a_killed_dispatcher_resumes_from_its_cursor(stack: Stack, receiver: Receiver) -> None:
    stack.set_clock(T0)
    stack.start_api(admin_token=TOKEN)
    first_worker = stack.start_worker("w1", webhook_backoff="1s")
    healthy = threading.Event()
    healthy.set()
    receiver.policy = lambda path, n: 200 if healthy.is_set() else 503
    sub = subscribe(stack, receiver.url("/hook"))
    state_key = keys.webhook_state(sub)
    t0 = ms(T0)

    identify(stack, t0, {"u1": "pro", "u2": "pro"})
    before = wait_stream(stack, 2)
    wait_until(lambda: stack.r.hget(state_key, "cursor") == before[-1][0], message="batch A")

    healthy.clear()
    identify(stack, t0 + 7_000, {"u1": "free", "u3": "pro"})
    entries = wait_stream(stack, 4)
    pending = f"{sub}:{entries[2][1]}"
    # Two failed attempts of the first pending event, then the dispatcher dies.
    drive(
        stack,
        [sub],
        lambda: sum(d.delivery_id == pending for d in receiver.received("/hook")) >= 2,
        "two failed attempts",
    )
    wait_until(lambda: stack.r.hget(state_key, "attempts") == "2", message="attempts stored")
    stack.kill(first_worker, signal.SIGKILL)
    assert stack.r.hget(state_key, "cursor") == before[-1][0]

    stack.start_worker("w2", webhook_backoff="1s")
    healthy.set()
    expected = [f"{sub}:{event_id}" for _, event_id, _ in entries]
    drive(stack, [sub], lambda: acknowledged(receiver, "/hook") == expected, "batch B")

    identify(stack, clock(stack), {"u2": "free"})  # a sentinel after the restart
    entries = wait_stream(stack, 5)
    expected = [f"{sub}:{event_id}" for _, event_id, _ in entries]
    drive(stack, [sub], lambda: acknowledged(receiver, "/hook") == expected, "the sentinel")
    assert_in_order_and_once(receiver.received("/hook"), sub, entries)
    assert stack.r.get(keys.WEBHOOKS_LEASE) == "w2"


def test_deliveries_verify_with_the_standard_webhooks_library(
    stack: Stack, receiver: Receiver
) -> None:
    # The library refuses a timestamp more than 5 minutes from the real time: the test
    # clock starts at the real time (it moves a few seconds on, no more).
    now = int(time.time() * 1000)
    stack.set_clock(now)
    stack.start_api(admin_token=TOKEN)
    stack.start_worker("w1", webhook_backoff="1s")
    receiver.policy = lambda path, n: 500 if path == "/new" and n == 0 else 200
    resp = admin(stack, "POST", "/cdp/webhooks", {"url": receiver.url("/new")})
    assert resp.status == 201, resp.body
    new, new_secret = resp.json()["id"], resp.json()["secret"]
    assert new_secret.startswith("whsec_")  # the library takes it as it is
    old = subscribe(stack, receiver.url("/old"))  # a plain secret: passed as its bytes

    identify(stack, now, {"u1": "pro", "u2": "pro"})
    entries = wait_stream(stack, 2)
    drive(
        stack,
        [new, old],
        lambda: (
            acknowledged(receiver, "/new") == [f"{new}:{e}" for _, e, _ in entries]
            and acknowledged(receiver, "/old") == [f"{old}:{e}" for _, e, _ in entries]
        ),
        "both subscriptions acknowledged every event",
    )

    for path, secret in (("/new", new_secret), ("/old", SECRET.encode())):
        deliveries = receiver.received(path)
        for d in deliveries:
            event_id = d.delivery_id.split(":", 1)[1]
            assert d.headers["webhook-id"] == event_id  # the same on the retry
            assert d.headers["webhook-timestamp"] == d.headers["x-cdp-timestamp"]
            assert standard_verify(d, secret) == json.loads(d.body)
            verify(d, secret if isinstance(secret, str) else secret.decode())  # legacy
            tampered = Delivery(d.path, d.headers, d.body.replace(b'"u', b'"x', 1), d.status)
            assert tampered.body != d.body
            with pytest.raises(WebhookVerificationError):
                standard_verify(tampered, secret)
            with pytest.raises(WebhookVerificationError):  # another subscription's secret
                standard_verify(d, SECRET.encode() if path == "/new" else new_secret)
    retried = receiver.received("/new")
    assert [d.status for d in retried] == [500, 200, 200]
    assert retried[0].headers["webhook-id"] == retried[1].headers["webhook-id"]
    times = [int(d.headers["webhook-timestamp"]) for d in retried[:2]]
    assert times[0] < times[1], times  # each attempt stamped anew

"""What the fault suite's load client sends: valid calls over a bounded population.

Every user ``n`` has one userId (``u<n>``), one email and a few anonymousIds, and no
identifier is ever shared between two users, so merges happen (an anonymous or
email-only profile joins its user's on ALIAS or IDENTIFY) but two userIds never meet:
every order of the same events converges, and the reference model is an exact oracle.

Each call is one *operation* with a tag (``properties.op``) that survives into the
stored event, so the checker can find every copy of it, whatever eventId the server
gave it. Requests go to ``POST /cdp/ingest`` (one event, the client's eventId) or
``POST /v1/batch`` (1 to 8 calls; a *keyed* batch gives every call a messageId, an
unkeyed one lets the server name them). Times are set by the client, so a retried
call is the same event whichever attempt was stored.
"""

from __future__ import annotations

import base64
import json
import random
from dataclasses import dataclass
from typing import Any

from cdp.events import iso_ms

WRITE_KEY = "chaos"
AUTHORIZATION = "Basic " + base64.b64encode(f"{WRITE_KEY}:".encode()).decode()
EVENT_NAMES = ("Viewed", "Clicked", "Purchased")
ANONS_PER_USER = 3


@dataclass(frozen=True, slots=True)
class Call:
    """One operation: ``tag`` is in the stored event's properties as ``op``."""

    tag: str
    kind: str  # IDENTIFY, TRACK or ALIAS
    user: int
    event_id: str | None  # None: the server names the event (a /v1 call without messageId)


@dataclass(frozen=True, slots=True)
class Request:
    route: str
    body: bytes
    calls: tuple[Call, ...]
    keyed: bool  # every call names itself: resending after an unknown outcome is safe

    @property
    def headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        if self.route.startswith("/v1/"):
            headers["Authorization"] = AUTHORIZATION
        return headers


class Workload:
    def __init__(self, users: int, run_id: str, rng: random.Random) -> None:
        self.users = users
        self.run_id = run_id
        self.rng = rng
        self._n = 0

    def next_request(self, now_ms: int) -> Request:
        if self.rng.random() < 0.5:
            call, payload = self._call(now_ms, keyed=True)
            event = {"eventId": call.event_id, "ts": iso_ms(now_ms), "payload": payload}
            return Request("/cdp/ingest", json.dumps(event).encode(), (call,), True)
        keyed = self.rng.random() < 0.5
        pairs = [self._call(now_ms, keyed) for _ in range(self.rng.randint(1, 8))]
        batch = [_segment_call(call, payload, now_ms) for call, payload in pairs]
        body = {"batch": batch, "sentAt": iso_ms(now_ms)}
        calls = tuple(call for call, _ in pairs)
        return Request("/v1/batch", json.dumps(body).encode(), calls, keyed)

    def _call(self, now_ms: int, keyed: bool) -> tuple[Call, dict[str, Any]]:
        self._n += 1
        tag = f"{self.run_id}-{self._n}"
        rng, user = self.rng, self.rng.randrange(self.users)
        uid, email = f"u{user}", f"u{user}@chaos.test"
        anon = f"a{user}-{rng.randrange(ANONS_PER_USER)}"
        roll = rng.random()
        payload: dict[str, Any]
        if roll < 0.6:
            payload = {"type": "TRACK", "name": rng.choice(EVENT_NAMES)}
            who = rng.random()
            if who < 0.5:
                payload["userId"] = uid
            elif who < 0.9:
                payload["anonymousId"] = anon
            else:
                payload["email"] = email
        elif roll < 0.9:
            plan: str | None = rng.choice(("pro", "free"))
            if rng.random() < 0.05:
                plan = None  # a tombstone
            payload = {
                "type": "IDENTIFY",
                "userId": uid,
                "traits": {"plan": plan, "score": rng.randrange(1000)},
            }
            if rng.random() < 0.5:
                payload["email"] = email
        else:
            payload = {"type": "ALIAS", "anonymousId": anon, "userId": uid}
        payload["properties"] = {"op": tag}
        call = Call(tag, payload["type"], user, tag if keyed else None)
        return call, payload


def _segment_call(call: Call, payload: dict[str, Any], now_ms: int) -> dict[str, Any]:
    """The same operation as a Segment call (for ``/v1/batch``)."""
    out: dict[str, Any] = {
        "type": call.kind.lower(),
        "timestamp": iso_ms(now_ms),
        "properties": payload["properties"],
    }
    if call.event_id is not None:
        out["messageId"] = call.event_id
    if call.kind == "ALIAS":
        out["userId"], out["previousId"] = payload["userId"], payload["anonymousId"]
        return out
    for field in ("userId", "anonymousId"):
        if field in payload:
            out[field] = payload[field]
    if call.kind == "TRACK":
        out["event"] = payload["name"]
        if "email" in payload:
            out["context"] = {"traits": {"email": payload["email"]}}
    else:
        out["traits"] = dict(payload["traits"])
        if "email" in payload:
            out["traits"]["email"] = payload["email"]
    return out

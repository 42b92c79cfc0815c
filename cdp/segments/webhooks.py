"""Webhook deliveries of segment events: signed, ordered, retried, resumable.

A subscription (``cdp:webhooks``, created over the admin API) names a URL, a secret
and optionally the segments it wants. The dispatcher runs in exactly one worker (the
holder of ``cdp:lease:webhooks``) and, per subscription, walks ``cdp:segment-events``
from the subscription's cursor, one event at a time, so each subscription sees its
events in order. A delivery is a POST of the event's JSON signed as the Standard
Webhooks specification says (https://www.standardwebhooks.com), so its libraries verify it:

    webhook-id:        <eventId>                              (stable across retries)
    webhook-timestamp: <unix seconds>
    webhook-signature: v1,<base64 HMAC-SHA256(key, "<eventId>.<timestamp>.<body>")>

The key of a secret ``whsec_<base64>`` is the bytes its base64 decodes to (what new
secrets look like); the key of any other secret (made before, or given so) is its UTF-8
bytes. The legacy headers, kept for the receivers written before them:

    X-CDP-Delivery:  <subscription id>:<eventId>          (stable across retries)
    X-CDP-Timestamp: <unix seconds>                       (the same as webhook-timestamp)
    X-CDP-Signature: v1=<hex HMAC-SHA256(secret's UTF-8 bytes, "<timestamp>.<body>")>

A 2xx moves the cursor past the event. Anything else (or no answer within
webhook-timeout) is retried after webhook-backoff, doubling up to 10 minutes, until
the event has failed for webhook-retry-for (1 h): then it goes to ``cdp:webhooks:dead``
with its last error and the cursor moves on. Cursor, attempts and next retry time
live in ``cdp:webhook:{id}``, so a restarted dispatcher resumes where it stopped.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import re
import secrets
from typing import Any

import aiohttp
import msgspec
import structlog

from cdp import keys
from cdp.clock import Clock
from cdp.connect import Client
from cdp.errors import InvalidSubscription
from cdp.events import iso_ms
from cdp.pipeline.leases import RoleLease
from cdp.scripts import Scripts
from cdp.settings import Settings
from cdp.streams import add_once, text

log = structlog.get_logger("cdp.webhooks")

MAX_BACKOFF_MS = 600_000
DEAD_MAXLEN = 100_000  # records kept in cdp:webhooks:dead
DEAD_MARKS_KEEP_MS = 86_400_000  # a give-up is recorded once within a day
DELIVERIES_PER_RUN = 50
# What a subscription URL may be (also the OpenAPI document's ``WebhookCreate.url``):
# http(s), an ASCII host name or address (IDNs in punycode), an optional port, then
# printable ASCII. Stricter than a URL parser on purpose: what passes is deliverable.
URL = (
    r"^https?://[A-Za-z0-9.-]+"
    r"(:(6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}|[0-9]{1,4}))?"
    r"([/?#][\x21-\x7e]*)?$"
)
MAX_URL_LENGTH = 2048
MIN_SECRET_LENGTH = 16
# Standard Webhooks secrets: "whsec_" then the base64 of 24 to 64 key bytes.
SECRET_PREFIX = "whsec_"
MIN_KEY_BYTES = 24
MAX_KEY_BYTES = 64
NEW_KEY_BYTES = 32
_URL = re.compile(URL)


class Subscription(msgspec.Struct, frozen=True):
    id: str
    url: str
    secret: str
    segments: list[str] | None = None
    createdAt: str = ""

    def encode(self) -> bytes:
        return msgspec.json.encode(self)

    @classmethod
    def decode(cls, raw: bytes | str) -> Subscription:
        return msgspec.json.decode(raw, type=cls)

    def public(self, with_secret: bool = True) -> dict[str, Any]:
        data = msgspec.to_builtins(self)
        if not with_secret:
            data["secret"] = self.secret[:4] + "..."
        return data  # type: ignore[no-any-return]

    def wants(self, segment: str) -> bool:
        return self.segments is None or segment in self.segments


def parse_subscription(body: Any, new_id: str, now_ms: int = 0) -> Subscription:
    """A POST /cdp/webhooks body -> Subscription; InvalidSubscription says what is wrong."""
    if not isinstance(body, dict):
        raise InvalidSubscription(
            'invalid webhook: expected {"url": "https://...", "segments": [...], "secret": "..."}'
        )
    unknown = set(body) - {"url", "segments", "secret"}
    if unknown:
        raise InvalidSubscription(f"invalid webhook: unknown fields {sorted(unknown)}")
    url = body.get("url")
    if not isinstance(url, str) or len(url) > MAX_URL_LENGTH or not _URL.fullmatch(url):
        raise InvalidSubscription(
            "invalid webhook: `url` must be an http:// or https:// URL with an ASCII host "
            "(punycode for international names) and printable ASCII after it, at most "
            f"{MAX_URL_LENGTH} long"
        )
    segments = body.get("segments")
    if segments is not None and (
        not isinstance(segments, list) or not all(isinstance(s, str) and s for s in segments)
    ):
        raise InvalidSubscription(
            "invalid webhook: `segments` must be a list of segment names, or absent for all"
        )
    secret = body.get("secret", new_secret())
    if not isinstance(secret, str) or len(secret) < MIN_SECRET_LENGTH:
        raise InvalidSubscription(
            f"invalid webhook: `secret` must be a string of at least {MIN_SECRET_LENGTH} "
            "characters, or absent to have one generated"
        )
    if secret.startswith(SECRET_PREFIX):
        key = _whsec_key(secret)
        if key is None or not MIN_KEY_BYTES <= len(key) <= MAX_KEY_BYTES:
            raise InvalidSubscription(
                f"invalid webhook: a `secret` starting with {SECRET_PREFIX!r} must go on with "
                f"the base64 of {MIN_KEY_BYTES} to {MAX_KEY_BYTES} bytes (Standard Webhooks)"
            )
    return Subscription(new_id, url, secret, segments, iso_ms(now_ms) if now_ms else "")


def new_secret() -> str:
    """A generated secret, in the Standard Webhooks format ``whsec_<base64 of 32 bytes>``."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(NEW_KEY_BYTES)).decode()


def _whsec_key(secret: str) -> bytes | None:
    encoded = secret[len(SECRET_PREFIX) :]
    try:  # padding may be left out, as the Standard Webhooks libraries accept
        return base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
    except (binascii.Error, ValueError):
        return None


def signing_key(secret: str) -> bytes:
    """The HMAC key of a secret: ``whsec_<base64>`` -> the decoded bytes, else its UTF-8."""
    if secret.startswith(SECRET_PREFIX):
        key = _whsec_key(secret)
        if key:
            return key
    return secret.encode()


def standard_signature(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` header (Standard Webhooks, v1)."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    mac = hmac.new(signing_key(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


def signature(secret: str, timestamp: int, body: bytes) -> str:
    """The legacy ``X-CDP-Signature`` header, keyed with the secret's UTF-8 bytes as is."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return "v1=" + mac.hexdigest()


def backoff_ms(attempts: int, base_ms: int) -> int:
    return int(min(base_ms * 2 ** max(attempts - 1, 0), MAX_BACKOFF_MS))


class Dispatcher:
    def __init__(
        self, redis: Client, scripts: Scripts, settings: Settings, clock: Clock, worker_id: str
    ) -> None:
        self.redis = redis
        self.settings = settings
        self.clock = clock
        self.lease = RoleLease(
            scripts, keys.WEBHOOKS_LEASE, "webhooks", worker_id, settings.lease_ttl_ms
        )

    async def run_once(self, session: aiohttp.ClientSession) -> int:
        """Deliver what is due for every subscription; returns deliveries that got a 2xx."""
        if not await self.lease.hold():
            return 0
        subs = [Subscription.decode(v) for v in (await self.redis.hgetall(keys.WEBHOOKS)).values()]
        done = await asyncio.gather(*(self._pump(sub, session) for sub in subs))
        return sum(done)

    async def _pump(self, sub: Subscription, session: aiohttp.ClientSession) -> int:
        state_key = keys.webhook_state(sub.id)
        state = {text(k): text(v) for k, v in (await self.redis.hgetall(state_key)).items()}
        now = await self.clock.now_ms()
        if int(state.get("nextAt", 0)) > now:
            return 0
        cursor = state.get("cursor", "0-0")
        entries: Any = await self.redis.xrange(
            keys.SEGMENT_EVENTS, f"({cursor}", "+", count=DELIVERIES_PER_RUN
        )
        delivered = 0
        for entry_id, fields in entries:
            if not sub.wants(text(fields[b"segment"])):
                cursor = text(entry_id)
                continue
            if not await self.lease.hold():  # another dispatcher took over: it goes on
                break
            error = await self._deliver(sub, session, text(fields[b"eventId"]), fields[b"e"], now)
            if error is None:
                cursor = text(entry_id)
                delivered += 1
                await self.redis.hset(
                    state_key,
                    mapping={"cursor": cursor, "attempts": 0, "nextAt": 0, "firstFailedAt": 0},
                )
                await self.redis.hincrby(state_key, "delivered", 1)
                state = {"attempts": "0", "firstFailedAt": "0"}
                continue
            attempts = int(state.get("attempts", 0)) + 1
            first_failed = int(state.get("firstFailedAt", 0)) or now
            if now - first_failed >= self.settings.webhook_retry_for_ms:
                await self._give_up(sub, state_key, text(entry_id), fields, attempts, error)
                return delivered
            await self.redis.hset(
                state_key,
                mapping={
                    "cursor": cursor,
                    "attempts": attempts,
                    "firstFailedAt": first_failed,
                    "nextAt": now + backoff_ms(attempts, self.settings.webhook_backoff_ms),
                    "lastError": error,
                },
            )
            await self.redis.hincrby(state_key, "retries", 1)  # /metrics: retries scheduled
            return delivered
        if entries:
            await self.redis.hset(state_key, "cursor", cursor)
        return delivered

    async def _deliver(
        self,
        sub: Subscription,
        session: aiohttp.ClientSession,
        event_id: str,
        body: bytes,
        now_ms: int,
    ) -> str | None:
        """POST one event; None on a 2xx, else the reason."""
        timestamp = now_ms // 1000
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "cdp-webhooks/0.1",
            "webhook-id": event_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": standard_signature(sub.secret, event_id, timestamp, body),
            "X-CDP-Delivery": f"{sub.id}:{event_id}",
            "X-CDP-Timestamp": str(timestamp),
            "X-CDP-Signature": signature(sub.secret, timestamp, body),
        }
        timeout = aiohttp.ClientTimeout(total=self.settings.webhook_timeout_ms / 1000)
        try:
            async with session.post(sub.url, data=body, headers=headers, timeout=timeout) as r:
                if 200 <= r.status < 300:
                    return None
                return f"HTTP {r.status}"
        except (aiohttp.ClientError, TimeoutError) as exc:
            return f"{type(exc).__name__}: {exc}"

    async def _give_up(
        self,
        sub: Subscription,
        state_key: str,
        entry_id: str,
        fields: dict[bytes, bytes],
        attempts: int,
        error: str,
    ) -> None:
        log.warning(
            "webhook delivery given up",
            subscription=sub.id,
            entry=entry_id,
            attempts=attempts,
            error=error,
        )
        # The dead record (written once: marked in its slot), then the cursor past the
        # event (the state's slot): a crash in between gives up on the event again at
        # the next run, which finds the record written and only moves the cursor.
        await add_once(
            self.redis,
            keys.WEBHOOKS_DEAD,
            [
                (
                    f"{sub.id}:{entry_id}",
                    {
                        "subscription": sub.id,
                        "entryId": entry_id,
                        "eventId": fields[b"eventId"],
                        "e": fields[b"e"],
                        "attempts": attempts,
                        "error": error,
                    },
                )
            ],
            DEAD_MAXLEN,
            DEAD_MARKS_KEEP_MS,
        )
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(
                state_key,
                mapping={
                    "cursor": entry_id,
                    "attempts": 0,
                    "nextAt": 0,
                    "firstFailedAt": 0,
                    "lastError": error,
                },
            )
            pipe.hincrby(state_key, "dead", 1)
            await pipe.execute()

    async def release(self) -> None:
        await self.lease.release()

"""What ``cdp bench`` sends: the events of each phase, as ``Spec`` tuples.

A ``Spec`` is (eventId, payload, ms its ``ts`` lies before "now"), turned into a
request body (``body``) or into the event as the API puts it on a stream
(``stream_event``) at the moment it is sent. Every eventId and identifier starts with
``bench-<run>-``, so a run's events are told apart from everything else.
"""

from __future__ import annotations

import random
from typing import Any

import msgspec

from cdp.clock import wall_ms
from cdp.events import StreamEvent, decode_ingest, iso_ms
from cdp.settings import Settings

Spec = tuple[str, dict[str, Any], int]  # eventId, payload, ms its ts lies before "now"
NAMES = ("Page Viewed", "Product Viewed", "Added to Cart", "Checkout Started", "Order Completed")
_encoder = msgspec.json.Encoder()


def workload(run: str, tag: str, n: int, users: int, rng: random.Random) -> list[Spec]:
    out: list[Spec] = []
    for i in range(n):
        u = rng.randrange(users)
        uid, anon, r = f"bench-{run}-u{u}", f"bench-{run}-a{u}", rng.random()
        payload: dict[str, Any]
        if r < 0.7:
            who = {"userId": uid} if rng.random() < 0.7 else {"anonymousId": anon}
            payload = {"type": "TRACK", "name": rng.choice(NAMES), "properties": {"i": i}, **who}
        elif r < 0.9:
            traits: dict[str, Any] = {"plan": rng.choice(("free", "pro")), "visits": i % 97}
            if rng.random() < 0.5:
                traits["country"] = rng.choice(("FR", "DE", "US"))
            payload = {"type": "IDENTIFY", "userId": uid, "traits": traits}
            if rng.random() < 0.3:
                payload["email"] = f"{uid}@example.com"
        else:
            payload = {"type": "ALIAS", "anonymousId": anon, "userId": uid}
        out.append((f"bench-{run}-{tag}-{i}", payload, rng.randrange(500)))
    return out


def pair_ids(run: str, tag: str, k: int) -> tuple[str, str]:
    """(userId, anonymousId) of the k-th pair of profiles a merging ALIAS joins."""
    return f"bench-{run}-{tag}u{k}", f"bench-{run}-{tag}a{k}"


def plan(run: str, events: int, users: int, merge_ratio: float) -> tuple[list[Spec], list[Spec]]:
    """(warm-up, measured) phases of the HTTP part.

    The measured phase holds ``events`` events: ``round(events * merge_ratio)`` ALIAS
    anonymousId -> userId, each between an anonymous and an identified profile that the
    warm-up created (one TRACK on each side), shuffled into the mixed workload.
    """
    rng = random.Random(run)
    pairs = round(events * merge_ratio)
    measured, warmup = workload(run, "http", events - pairs, users, rng), list[Spec]()
    for k in range(pairs):
        uid, anon = pair_ids(run, "m", k)
        for side, who in (("a", {"anonymousId": anon}), ("u", {"userId": uid})):
            track = {"type": "TRACK", "name": rng.choice(NAMES), **who}
            warmup.append((f"bench-{run}-warm-{k}{side}", track, rng.randrange(500)))
        alias = {"type": "ALIAS", "anonymousId": anon, "userId": uid}
        spec = (f"bench-{run}-merge-{k}", alias, rng.randrange(500))
        measured.insert(rng.randrange(len(measured) + 1), spec)
    return warmup, measured


def small_profiles(run: str, n: int, bucket_ms: int) -> tuple[list[Spec], ...]:
    """(setup, merging, linking) for the merge cost: ``n`` pairs of small profiles.

    An anonymous one (anonymousId, email) created first, so it survives, and an
    identified one (userId, email, another anonymousId); each with 3 traits and 3
    TRACKs a bucket apart (2 counters of 3 buckets). ``merging`` is one ALIAS per pair;
    ``linking`` one ALIAS per pair from a new anonymousId to its userId.
    """
    setup, merging, linking = list[Spec](), list[Spec](), list[Spec]()
    for k in range(n):
        uid, anon = pair_ids(run, "r", k)
        traits = {"plan": "pro", "visits": k, "country": "FR"}
        sides = (
            {"anonymousId": anon, "email": f"{anon}@example.com"},
            {"userId": uid, "email": f"{uid}@example.com", "anonymousId": anon + "-b"},
        )
        for side, who in enumerate(sides):
            identify = {"type": "IDENTIFY", "traits": traits, **who}
            setup.append((f"bench-{run}-r{k}-{side}", identify, 0))
            for b in range(3):
                track = {"type": "TRACK", "name": NAMES[0], **who}
                setup.append((f"bench-{run}-r{k}-{side}-{b}", track, b * bucket_ms))
        alias = {"type": "ALIAS", "anonymousId": anon, "userId": uid}
        merging.append((f"bench-{run}-rm{k}", alias, 0))
        alias = {"type": "ALIAS", "anonymousId": anon + "-c", "userId": uid}
        linking.append((f"bench-{run}-rl{k}", alias, 0))
    return setup, merging, linking


def body(spec: Spec, now: int) -> bytes:
    return _encoder.encode({"eventId": spec[0], "ts": iso_ms(now - spec[2]), "payload": spec[1]})


def stream_event(spec: Spec, settings: Settings) -> StreamEvent:
    """The event exactly as the API puts it on a partition stream."""
    now = wall_ms()
    return decode_ingest(
        body(spec, now),
        now_ms=now,
        max_event_bytes=settings.max_event_bytes,
        max_future_skew_ms=settings.max_future_skew_ms,
    )

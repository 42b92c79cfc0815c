"""Reading a profile back: resolve an identifier, gather its keys into one document.

``resolve(redis, "email:a@b.c")`` returns the canonical id owning an identifier (or
the id itself when given a canonical id such as ``p12``); ``read_profile`` returns the
JSON-ready view that ``cdp profile`` prints. Tombstoned traits are left out of
``traits`` and listed, with their timestamps, under ``tombstones``. ``read_profiles``
reads many profiles (plus their segment memberships) in two round trips, and
``read_page`` walks ``cdp:profiles`` in canonical-id order (the admin API, the export).
``main_profile`` is ``cdp profile``.

A malformed identifier or canonical id raises ``InvalidIdentifier`` (HTTP 400, exit
status 2); a well-formed one that no profile answers to, ``ProfileNotFound`` (HTTP 404,
exit status 1).
"""

from __future__ import annotations

import asyncio
import json
import re
import sys
from collections.abc import Sequence
from typing import Any

from cdp import keys
from cdp.connect import Client, connect
from cdp.errors import InvalidIdentifier, ProfileNotFound
from cdp.identity import typed_identifiers
from cdp.segments.definitions import builtins
from cdp.settings import Settings
from cdp.streams import text

_TYPES = {"user": "userId", "anon": "anonymousId", "email": "email"}
CANONICAL_ID = re.compile(r"p[0-9]+")  # what the apply script issues: p1, p2...
MAX_HOPS = 16
# Always defined: their thresholds are settings, their names are not.
BUILTIN_SEGMENTS = frozenset(builtins(Settings()))


def normalise(identifier: str) -> str:
    """``email:A@B.C `` -> ``email:a@b.c``; a canonical id (``p12``) is returned as it is.

    InvalidIdentifier when it is neither typed (``user:``, ``anon:``, ``email:`` and a
    value) nor a canonical id; ProfileNotFound for a blocked placeholder value (such as
    ``user:null``): well-formed, but no profile ever answers to it.
    """
    kind, sep, value = identifier.partition(":")
    if not sep:
        if CANONICAL_ID.fullmatch(identifier):
            return identifier
        raise InvalidIdentifier(_malformed(identifier))
    if kind not in _TYPES:
        raise InvalidIdentifier(_malformed(identifier))
    if not value.strip():
        raise InvalidIdentifier(f"{identifier!r} has no value after {kind}:")
    typed = typed_identifiers(
        **{  # type: ignore[arg-type]
            "user_id": value if kind == "user" else None,
            "anonymous_id": value if kind == "anon" else None,
            "email": value if kind == "email" else None,
        }
    )
    if not typed:
        raise ProfileNotFound(f"{identifier!r} is a blocked placeholder value")
    return typed[0]


def _malformed(identifier: str) -> str:
    return (
        f"{identifier!r} is not a profile identifier: use user:<userId>, anon:<anonymousId>, "
        "email:<address> or a canonical id such as p12"
    )


async def resolve(redis: Client, identifier: str) -> str:
    """The live canonical id behind an identifier or any canonical id ever issued."""
    typed = normalise(identifier)
    if ":" in typed:
        cid = await redis.get(keys.identifier(typed))
        if cid is None:
            raise ProfileNotFound(f"no profile knows the identifier {typed!r}")
        return text(cid)
    cid = typed
    for _ in range(MAX_HOPS):  # merges repoint absorbed ids: one hop, more only mid-merge
        meta = await redis.hmget(keys.profile(cid), "mergedInto", "createdAt")
        if meta[0] is not None:
            cid = text(meta[0])
        elif meta[1] is not None:
            return cid
        else:
            raise ProfileNotFound(f"no profile with canonical id {typed!r}")
    raise ProfileNotFound(f"canonical id {typed!r}: merge pointers do not end")


async def read_profile(redis: Client, identifier: str) -> dict[str, Any]:
    cid = await resolve(redis, identifier)
    async with redis.pipeline(transaction=False) as pipe:
        pipe.hgetall(keys.profile(cid))
        pipe.hgetall(keys.traits(cid))
        pipe.smembers(keys.identifiers(cid))
        pipe.hkeys(keys.counters(cid))
        pipe.smembers(keys.merged(cid))
        meta, raw_traits, ids, counter_names, merged = await pipe.execute()
    names = sorted(text(n) for n in counter_names)
    async with redis.pipeline(transaction=False) as pipe:
        for name in names:
            pipe.zrange(keys.counter(cid, name), 0, -1, withscores=True)
        buckets = await pipe.execute()
    return _document(cid, meta, raw_traits, ids, merged, names, buckets)


def _document(
    cid: str,
    meta: dict[Any, Any],
    raw_traits: dict[Any, Any],
    ids: set[Any],
    merged: set[Any],
    names: list[str],
    buckets: list[Any],
) -> dict[str, Any]:
    traits: dict[str, Any] = {}
    tombstones: dict[str, Any] = {}
    for name, raw in sorted(raw_traits.items()):
        cell = json.loads(raw)
        if cell["v"] is None:
            tombstones[text(name)] = {"ts": cell["ts"], "eventId": cell["eventId"]}
        else:
            traits[text(name)] = cell
    meta = {text(k): text(v) for k, v in meta.items()}
    return {
        "canonicalId": cid,
        "identifiers": sorted(text(i) for i in ids),
        "traits": traits,
        "tombstones": tombstones,
        "firstSeen": meta.get("firstSeen"),
        "lastSeen": meta.get("lastSeen"),
        "createdAt": meta.get("createdAt"),
        "mergedFrom": sorted((text(m) for m in merged), key=lambda c: (len(c), c)),
        "counters": {
            name: {
                "total": int(sum(score for _, score in rows)),
                "buckets": {text(member): int(score) for member, score in rows},
            }
            for name, rows in zip(names, buckets, strict=True)
        },
    }


# -- many profiles at once (the admin API's pages and the NDJSON export) ---------------

_PARTS = 6  # replies per profile in read_profiles' first round trip


def _is_live(meta: dict[Any, Any]) -> bool:
    fields = {text(k) for k in meta}
    return "createdAt" in fields and "mergedInto" not in fields


def _memberships(raw: dict[Any, Any], defined: frozenset[str]) -> dict[str, Any]:
    """{segment: {"since": iso}} for every defined segment the profile is in."""
    out: dict[str, Any] = {}
    for name, value in sorted((text(k), v) for k, v in raw.items()):
        state = json.loads(value)
        if state.get("in") is True and name in defined:
            out[name] = {"since": state.get("since")}
    return out


# A profile merged away between resolving an identifier and reading it is resolved again.
READ_ATTEMPTS = 3


async def read_resolved(
    redis: Client, identifier: str, *, counters: bool = True
) -> dict[str, Any] | None:
    """The document of the live profile behind ``identifier`` (ProfileNotFound when
    none); None when it was merged away under every one of READ_ATTEMPTS reads."""
    for _ in range(READ_ATTEMPTS):
        docs = await read_profiles(redis, [await resolve(redis, identifier)], counters=counters)
        if docs:
            return docs[0]
    return None


async def read_profiles(
    redis: Client, cids: Sequence[str], *, counters: bool = True
) -> list[dict[str, Any]]:
    """The documents of the live profiles among ``cids``, in their order, in 2 round trips.

    A document is ``read_profile``'s plus ``segments``: ``{name: {"since": iso}}`` for
    each segment the profile is a member of (a deleted segment's leftover state in
    ``cdp:profile:{cid}:segments`` is not shown). ``counters=False`` leaves the counters
    out and needs one round trip. Ids merged away or unknown are skipped, not errors:
    an id read from ``cdp:profiles`` a moment ago may have been merged since.
    """
    if not cids:
        return []
    async with redis.pipeline(transaction=False) as pipe:
        pipe.hkeys(keys.SEGMENTS)
        for cid in cids:
            pipe.hgetall(keys.profile(cid))
            pipe.hgetall(keys.traits(cid))
            pipe.smembers(keys.identifiers(cid))
            pipe.smembers(keys.merged(cid))
            pipe.hgetall(keys.profile_segments(cid))
            pipe.hkeys(keys.counters(cid))
        custom, *replies = await pipe.execute()
    defined = BUILTIN_SEGMENTS | {text(n) for n in custom}
    rows = [
        (cid, replies[i * _PARTS : (i + 1) * _PARTS])
        for i, cid in enumerate(cids)
        if _is_live(replies[i * _PARTS])
    ]
    names = {cid: sorted(text(n) for n in row[5]) if counters else [] for cid, row in rows}
    flat: list[Any] = []
    if any(names.values()):
        async with redis.pipeline(transaction=False) as pipe:
            for cid, _ in rows:
                for name in names[cid]:
                    pipe.zrange(keys.counter(cid, name), 0, -1, withscores=True)
            flat = await pipe.execute()
    docs = []
    at = 0
    for cid, (meta, raw_traits, ids, merged, segments, _) in rows:
        n = len(names[cid])
        doc = _document(cid, meta, raw_traits, ids, merged, names[cid], flat[at : at + n])
        at += n
        if not counters:
            del doc["counters"]
        doc["segments"] = _memberships(segments, defined)
        docs.append(doc)
    return docs


async def read_page(
    redis: Client, after: int, limit: int
) -> tuple[list[dict[str, Any]], int | None]:
    """Up to ``limit`` live profiles numbered above ``after``, in ``cdp:profiles`` order,
    and the cursor of the next page (the last number read), None after the last page."""
    found: Any = await redis.zrangebyscore(
        keys.PROFILES, f"({after}", "+inf", start=0, num=limit + 1, withscores=True
    )
    rows = found[:limit]
    docs = await read_profiles(redis, [text(cid) for cid, _ in rows])
    return docs, int(rows[-1][1]) if len(found) > limit else None


def main_profile(settings: Settings, identifier: str) -> int:
    """``cdp profile``: print the profile as indented JSON; 1 when there is none."""

    async def fetch() -> dict[str, object]:
        redis = await connect(settings, socket_connect_timeout=2)
        try:
            return await read_profile(redis, identifier)
        finally:
            await redis.aclose()

    try:
        print(json.dumps(asyncio.run(fetch()), indent=2))
    except ProfileNotFound as exc:
        print(f"cdp: {exc}", file=sys.stderr)
        return 1
    return 0

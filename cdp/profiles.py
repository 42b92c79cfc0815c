"""Reading a profile back: resolve an identifier, gather its keys into one document.

``resolve(redis, "email:a@b.c")`` returns the canonical id owning an identifier (or
the id itself when given a canonical id such as ``p12``); ``read_profile`` returns the
JSON-ready view that ``cdp profile`` prints. Tombstoned traits are left out of
``traits`` and listed, with their timestamps, under ``tombstones``.
"""

from __future__ import annotations

import json
from typing import Any

from redis.asyncio import Redis

from cdp import keys
from cdp.errors import ProfileNotFound
from cdp.identity import typed_identifiers

_TYPES = {"user": "userId", "anon": "anonymousId", "email": "email"}
MAX_HOPS = 16


def normalise(identifier: str) -> str:
    """``email:A@B.C `` -> ``email:a@b.c``; a canonical id is returned as it is."""
    kind, sep, value = identifier.partition(":")
    if not sep:
        return identifier
    if kind not in _TYPES:
        raise ProfileNotFound(
            f"{identifier!r}: the type must be one of user:, anon:, email: (or a canonical id)"
        )
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


def _s(raw: Any) -> str:
    return raw.decode() if isinstance(raw, bytes) else str(raw)


async def resolve(redis: Redis, identifier: str) -> str:
    """The live canonical id behind an identifier or any canonical id ever issued."""
    typed = normalise(identifier)
    if ":" in typed:
        cid = await redis.get(keys.identifier(typed))
        if cid is None:
            raise ProfileNotFound(f"no profile knows the identifier {typed!r}")
        return _s(cid)
    cid = typed
    for _ in range(MAX_HOPS):  # merges repoint absorbed ids: one hop, more only mid-merge
        meta = await redis.hmget(keys.profile(cid), "mergedInto", "createdAt")
        if meta[0] is not None:
            cid = _s(meta[0])
        elif meta[1] is not None:
            return cid
        else:
            raise ProfileNotFound(f"no profile with canonical id {typed!r}")
    raise ProfileNotFound(f"canonical id {typed!r}: merge pointers do not end")


async def read_profile(redis: Redis, identifier: str) -> dict[str, Any]:
    cid = await resolve(redis, identifier)
    async with redis.pipeline(transaction=False) as pipe:
        pipe.hgetall(keys.profile(cid))
        pipe.hgetall(keys.traits(cid))
        pipe.smembers(keys.identifiers(cid))
        pipe.hkeys(keys.counters(cid))
        pipe.smembers(keys.merged(cid))
        meta, raw_traits, ids, counter_names, merged = await pipe.execute()
    names = sorted(_s(n) for n in counter_names)
    async with redis.pipeline(transaction=False) as pipe:
        for name in names:
            pipe.zrange(keys.counter(cid, name), 0, -1, withscores=True)
        buckets = await pipe.execute()
    traits: dict[str, Any] = {}
    tombstones: dict[str, Any] = {}
    for name, raw in sorted(raw_traits.items()):
        cell = json.loads(raw)
        if cell["v"] is None:
            tombstones[_s(name)] = {"ts": cell["ts"], "eventId": cell["eventId"]}
        else:
            traits[_s(name)] = cell
    meta = {_s(k): _s(v) for k, v in meta.items()}
    return {
        "canonicalId": cid,
        "identifiers": sorted(_s(i) for i in ids),
        "traits": traits,
        "tombstones": tombstones,
        "firstSeen": meta.get("firstSeen"),
        "lastSeen": meta.get("lastSeen"),
        "createdAt": meta.get("createdAt"),
        "mergedFrom": sorted((_s(m) for m in merged), key=lambda c: (len(c), c)),
        "counters": {
            name: {
                "total": int(sum(score for _, score in rows)),
                "buckets": {_s(member): int(score) for member, score in rows},
            }
            for name, rows in zip(names, buckets, strict=True)
        },
    }

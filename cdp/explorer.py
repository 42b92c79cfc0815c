"""The console's profile explorer: one profile with its history around it.

``explore(redis, identifier)`` reads the profile behind the identifier (a typed
identifier or any canonical id ever issued: ``cdp.profiles.read_resolved``) and gathers

- ``profile``: exactly the document of ``GET /cdp/profiles/{id}``
  (``cdp.profiles.read_profiles``);
- ``traits`` (``{"value", "ts", "eventId"}`` each) and ``tombstones`` (``{"ts",
  "eventId"}``): the cells of ``cdp:profile:{cid}:traits``, which LWW compares, their
  times in epoch ms;
- ``counters``: each counter's buckets as ``[bucket start ms, count]``, oldest first;
- ``merges``: the records of ``cdp:merges`` that name the profile or one of the
  profiles merged into it (``survivor``, ``merged`` or ``profile``), newest first,
  among the newest ``MERGES_SCAN`` records of the stream;
- ``segmentEvents``: the ENTER/EXIT records of ``cdp:segment-events`` of the profile
  (or of a profile merged into it), newest first, among the newest
  ``SEGMENT_EVENTS_SCAN`` records.

Each record is its stream fields, a field holding a JSON object or array decoded, plus
``entryId``.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from cdp import keys
from cdp.connect import Client
from cdp.events import to_ms
from cdp.profiles import read_resolved
from cdp.streams import text

MERGES_SCAN = 5_000  # newest cdp:merges records read per request
SEGMENT_EVENTS_SCAN = 5_000  # newest cdp:segment-events records read per request
_MERGE_FIELDS = (b"survivor", b"merged", b"profile")


def record(entry_id: Any, raw: dict[Any, Any]) -> dict[str, Any]:
    """A stream entry as JSON: its fields (JSON objects and arrays decoded) + entryId."""
    out: dict[str, Any] = {}
    for key, value in raw.items():
        field, string = text(key), text(value)
        if string[:1] in ("{", "["):
            try:
                out[field] = json.loads(string)
                continue
            except ValueError:
                pass
        out[field] = string
    out["entryId"] = text(entry_id)
    return out


def _ms(ts: Any) -> Any:
    """A cell's time (ISO-8601, as the apply writes it) in epoch ms."""
    if not isinstance(ts, str):
        return ts
    try:
        return to_ms(datetime.fromisoformat(ts.replace("Z", "+00:00")))
    except ValueError:
        return ts


def _cells(profile: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    traits = {
        name: {"value": cell["v"], "ts": _ms(cell["ts"]), "eventId": cell["eventId"]}
        for name, cell in profile["traits"].items()
    }
    tombstones = {
        name: {"ts": _ms(cell["ts"]), "eventId": cell["eventId"]}
        for name, cell in profile["tombstones"].items()
    }
    return traits, tombstones


def _buckets(profile: dict[str, Any]) -> dict[str, list[list[int]]]:
    return {
        name: sorted([int(bucket), count] for bucket, count in counter["buckets"].items())
        for name, counter in profile["counters"].items()
    }


async def explore(redis: Client, identifier: str) -> dict[str, Any] | None:
    """The explorer's view of the profile behind ``identifier`` (ProfileNotFound when
    none; None when it kept being merged away while read: the caller's 409)."""
    profile = await read_resolved(redis, identifier)
    if profile is None:
        return None
    ids = {profile["canonicalId"], *profile["mergedFrom"]}
    async with redis.pipeline(transaction=False) as pipe:
        pipe.xrevrange(keys.MERGES, count=MERGES_SCAN)
        pipe.xrevrange(keys.SEGMENT_EVENTS, count=SEGMENT_EVENTS_SCAN)
        merges_raw, segment_raw = await pipe.execute()
    raw_ids = {i.encode() for i in ids}  # filtered on the raw fields: decoded if kept
    merges = [
        record(entry_id, fields)
        for entry_id, fields in merges_raw
        if any(fields.get(f) in raw_ids for f in _MERGE_FIELDS)
    ]
    segment_events = [
        record(entry_id, fields)
        for entry_id, fields in segment_raw
        if text(fields.get(b"canonicalId", b"")) in ids
    ]
    traits, tombstones = _cells(profile)
    return {
        "profile": profile,
        "traits": traits,
        "tombstones": tombstones,
        "counters": _buckets(profile),
        "merges": merges,
        "segmentEvents": segment_events,
    }

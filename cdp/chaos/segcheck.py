"""The segment half of the checker: ``cdp:segment-events`` and memberships at the end.

Per (segment, canonical id), in stream order, the events must start with ENTER and
strictly alternate, number themselves 1, 2, 3... (``seg:<segment>:<cid>:<n>``), and
carry evaluation times that never go backwards. At the end, for every live profile,
membership (``cdp:segment:{name}:members``) must agree with its last event and with
the rule on the model's profile (``pro_plan``: plan is "pro"; ``power_user``: at
least power-user-threshold TRACKs, the run being shorter than its window); a profile
merged away must not be left inside a segment (its last event must be an EXIT).
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable
from typing import Any

from cdp import keys
from cdp.connect import SyncClient
from cdp.settings import Settings
from cdp.streams import text

Report = Callable[[str, str], None]


def _expected(segment: str, profile: dict[str, Any], settings: Settings) -> bool | None:
    if segment == "pro_plan":
        cell = profile["traits"].get("plan")
        return cell is not None and json.loads(cell[2]) == "pro"
    if segment == "power_user":
        tracks = sum(profile["counters"].get(keys.ALL_TRACK, {}).values())
        return bool(tracks >= settings.power_user_threshold)
    return None  # reengage depends on gaps the run does not control


def check_segments(
    client: SyncClient,
    settings: Settings,
    live: dict[str, dict[str, Any]],
    report: Report,
) -> None:
    history: dict[tuple[str, str], list[tuple[str, int, str]]] = defaultdict(list)
    rows: Any = client.xrange(keys.SEGMENT_EVENTS)
    for _, fields in rows:
        f = {text(k): text(v) for k, v in fields.items()}
        n = int(f["eventId"].rsplit(":", 1)[1])
        ts = json.loads(f["e"])["ts"]
        history[(f["segment"], f["canonicalId"])].append((f["transition"], n, ts))
    for (segment, cid), events in sorted(history.items()):
        for i, (transition, n, ts) in enumerate(events):
            around = " ".join(
                f"{t}#{k}@{when[11:23]}" for t, k, when in events[max(0, i - 2) : i + 2]
            )
            where = f"{segment} / {cid}: ... {around} ..."
            if transition != ("ENTER" if i % 2 == 0 else "EXIT"):
                report("segment events do not alternate ENTER/EXIT", where)
                break
            if n != i + 1:
                report("segment event numbers skip or repeat", where)
                break
            if i and ts < events[i - 1][2]:
                report("segment evaluation time went backwards", where)
                break
    segments = ("power_user", "pro_plan", "reengage")
    members = {
        s: {text(m) for m in client.zrange(keys.segment_members(s), 0, -1)} for s in segments
    }
    for cid, profile in sorted(live.items()):
        for segment in segments:
            member = cid in members[segment]
            events = history.get((segment, cid), [])
            if member != bool(events and events[-1][0] == "ENTER"):
                report("membership disagrees with its last segment event", f"{segment} / {cid}")
            want = _expected(segment, profile, settings)
            if want is not None and member != want:
                report(
                    "membership differs from the rule on the final profile",
                    f"{segment} / {cid}: member={member}, the model's profile says {want}",
                )
    for (segment, cid), events in sorted(history.items()):
        if cid in live or events[-1][0] != "ENTER":
            continue
        merged_into = client.hget(keys.profile(cid), "mergedInto")
        if merged_into is not None:
            report(
                "a merged-away profile was left inside a segment (no EXIT)",
                f"{segment} / {cid} merged into {text(merged_into)}",
            )

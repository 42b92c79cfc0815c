"""What ``cdp bench`` prints: a table next to DESIGN.md's reference figures, then the
whole result as one JSON line."""

from __future__ import annotations

import json
from typing import Any

ROWS = [  # result key, label, DESIGN.md reference
    ("ingest_eps", "ingest: accepted events/s", "4.7k (1 XADD/request), 15.5k bare aiohttp"),
    ("p50_ms", "ingest: latency p50 ms", ""),
    ("p99_ms", "ingest: latency p99 ms", "41 (1 XADD/request)"),
    ("not_accepted", "ingest: answers other than 202", "none"),
    ("e2e_eps", "end to end: applied events/s", "(includes the window)"),
    ("merges", "end to end: profiles merged", "(cdp:merges, this run's events)"),
    ("refused", "end to end: merges or links refused", "(guard rails)"),
    ("late", "end to end: counted late", "(ts <= receipt - window-size)"),
    ("e2e_seconds", "end to end: first send -> all done, s", ""),
    ("drain_s", "end to end: last 202 -> all done, s", "~window-size + ticker"),
    ("xadd_eps", "redis: XADD by 100, events/s", "64k"),
    ("evalsha_cps", "redis: EVALSHA 5 cmds by 100, calls/s", "35k"),
    ("apply_eps_batch_1", "apply_batch, 1 event/call: events/s", "19k (prototype)"),
    ("apply_eps_batch_10", "apply_batch, 10 events/call: events/s", "46k"),
    ("apply_eps_batch_100", "apply_batch, 100 events/call: events/s", "65k"),
    ("dedup_bytes_per_entry", "memory: bytes per dedup entry", "133 (one SET NX PX key)"),
    ("profile_bytes", "memory: bytes per profile", "870"),
    ("keys_per_profile", "memory: keys per profile", "(counted by DBSIZE)"),
    ("merge_alias_us", "redis: usec per ALIAS merging 2 profiles", "(EVALSHA usec, batch-size)"),
    ("link_alias_us", "redis: usec per ALIAS linking a new id", "(EVALSHA usec, batch-size)"),
    ("merge_us", "redis: usec per merge (difference)", ""),
]


def report(result: dict[str, Any]) -> None:
    r = result
    merging = f", merge-ratio {r['merge_ratio']} after a warm-up of {r['warmup_events']}"
    print(
        f"\ncdp bench, run {r['run']}: {r['events']} events, {r['concurrency']} in flight,"
        f" {r['users']} users{merging if r['merge_ratio'] else ''};"
        f" window-size {r['window_size']} (as set for this command),"
        f" {r['partitions']} partitions, {r['workers']} workers, batch-size {r['batch_size']};"
        f" Redis {r['redis']} (AOF {'on' if r['aof'] else 'off'})\n"
    )
    rows = list(ROWS)
    if r["batch_size"] not in (1, 10, 100):
        key, label = f"apply_eps_batch_{r['batch_size']}", f"{r['batch_size']} events/call"
        at = [row[0] for row in rows].index("apply_eps_batch_100") + 1
        rows.insert(at, (key, f"apply_batch, {label}: events/s", "42k at 500"))
    print(f"{'':42} {'measured':>12}   DESIGN.md, this kind of machine")
    for key, label, reference in rows:
        value = r.get(key, "-")
        shown = f"{value:,}" if isinstance(value, int) else str(value)
        shown = "none" if value == {} else shown
        print(f"{label:42} {shown:>12}   {reference}")
    print()
    print(json.dumps(result, separators=(",", ":")))

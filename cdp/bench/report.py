"""What ``cdp bench`` prints: issue 10's rows measured on the stack, each beside the
same run's bare-Redis figures or the load generator's CPU, then the whole result as one
JSON line (the last line)."""

from __future__ import annotations

import json
from typing import Any

# row -> [(result key, label)]
ROWS: dict[str, list[tuple[str, str]]] = {
    "ingest": [
        ("ingest_rps", "single-event POST /cdp/ingest, req/s"),
        ("ingest_p50_ms", "single-event POST /cdp/ingest, p50 ms"),
        ("ingest_p99_ms", "single-event POST /cdp/ingest, p99 ms"),
    ],
    "batch": [
        ("batch_rps", "/v1/batch x{calls}, req/s"),
        ("batch_eps", "/v1/batch x{calls}, events/s accepted"),
        ("batch_p99_ms", "/v1/batch x{calls}, p99 ms"),
    ],
    "drain": [
        ("drain_eps", "drain of {drain_events} events, events/s"),
        ("redis_us", "Redis CPU per applied event, us"),
        ("worker_us", "worker CPU per applied event, us"),
    ],
    "sustained": [("sustained_eps", "sustained (backlog flat {sustain_seconds} s), events/s")],
    "freshness": [
        ("fresh_p50_s", "freshness at {fresh_rate} events/s, p50 s"),
        ("fresh_p99_s", "freshness at {fresh_rate} events/s, p99 s"),
        ("fresh_max_s", "freshness at {fresh_rate} events/s, max s"),
    ],
    "memory": [
        ("profile_bytes", "Redis memory per profile, B"),
        ("keys_per_profile", "keys per profile"),
        ("traits_encoding", "traits hash encoding"),
        ("eventid_bytes", "Redis memory per remembered eventId, B"),
    ],
    "mixed": [  # the earlier cdp bench: the mixed workload, apply_batch, merges
        ("mixed_ingest_eps", "mixed workload: accepted events/s"),
        ("mixed_p99_ms", "mixed workload: latency p99 ms"),
        ("mixed_e2e_eps", "mixed workload: end to end events/s"),
        ("mixed_merges", "mixed workload: profiles merged"),
        ("mixed_apply_eps_batch_100", "apply_batch, 100 events/call: events/s"),
        ("mixed_merge_us", "redis: usec per merge"),
    ],
    "merges": [  # issue 11: through the stack, every command summed over the masters
        ("merge_e2e_cpu_us", "merge via the stack: Redis CPU us per merge"),
        ("merge_e2e_script_us", "merge via the stack: script usec per merge"),
        ("merge_e2e_calls", "merging ALIAS: Redis commands per event"),
        ("link_e2e_calls", "linking ALIAS: Redis commands per event"),
    ],
}


def beside(row: str, r: dict[str, Any]) -> str:
    """The same run's reference for a row: the bare Redis, or the load generator's CPU."""
    if row in ("ingest", "batch") and f"{row}_client" in r:
        return f"{r[f'{row}_client']}, client CPU {r[f'{row}_client_cpu']} cores"
    if row == "freshness":
        return f"window-size {r['window_size']}, {r.get('fresh_samples', 0)} samples"
    if row == "memory":
        return "keys under bench:<run> on this Redis"
    if row == "merges":
        return f"{r.get('merges_pairs', 0):,} pairs, merging minus linking ALIAS"
    if "xadd_eps" in r:
        return f"bare Redis: XADD {r['xadd_eps']:,}/s, EVALSHA {r['evalsha_cps']:,}/s"
    return ""


def shown(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def report(result: dict[str, Any]) -> None:
    r = result
    masters = f", a cluster of {r['masters']} masters" if r.get("masters", 1) > 1 else ""
    print(
        f"\ncdp bench, run {r['run']}: {r['url']}; window-size {r['window_size']}"
        f" (as set for this command), {r['partitions']} partitions, {r['workers']} live"
        f" workers; Redis {r['redis']}{masters} (AOF {'on' if r['aof'] else 'off'});"
        f" load generator: {r['client']}\n"
    )
    print(f"{'':52} {'measured':>12}   beside it (same run)")
    for row in r["rows"]:
        for key, label in ROWS.get(row, []):
            text = label.format(**r)
            print(f"{text:52} {shown(r.get(key)):>12}   {beside(row, r)}")
    if "xadd_eps" in r:
        print(f"{'bare Redis: XADD by 100, events/s':52} {r['xadd_eps']:>12,}")
        print(f"{'bare Redis: EVALSHA 5 cmds by 100, calls/s':52} {r['evalsha_cps']:>12,}")
    for note in r.get("notes", []):
        print(note)
    if "drain_commands" in r:
        print("drain, INFO commandstats deltas, top commands per applied event:")
        for name, c in r["drain_commands"].items():
            print(
                f"  {name:<12} calls/event {c['calls_per_event']:7.3f}"
                f"  us/event {c['us_per_event']:7.2f}"
            )
    print()
    print(json.dumps(result, separators=(",", ":")))

"""``cdp bench``: measure a running stack, and the bare Redis under it, on one screen.

1. ingest: a mixed workload (~70% TRACK, ~20% IDENTIFY, ~10% ALIAS over ``users``
   users, ``ts`` = now minus up to 0.5 s) POSTed to ``/cdp/ingest`` with ``concurrency``
   requests in flight: accepted events/s, p50/p99 latency, answers other than 202.
   With ``merge_ratio`` > 0 that share of the events is ALIAS anonymousId -> userId
   between two profiles that already exist (one merge each): a warm-up phase (one
   TRACK per side of each pair) is sent first and waited for until applied, and only
   the phase after it is measured;
2. end to end: from the first request until ``processed + dedup_hits + dropped`` in
   ``cdp:metrics`` has grown by the number accepted. It includes the window-size the
   workers hold every event for, so it is not a pure apply rate. The merges and
   refusals this run's events recorded in ``cdp:merges`` are counted (and checked: one
   merge per merging ALIAS);
3. bare Redis, same server, keys ``bench:<run>:*`` only (deleted afterwards): XADD and
   EVALSHA of a trivial 5-command script, pipelined by 100; the worker's own
   ``queue_apply`` (every key renamed under ``bench:<run>``, no lease) on real stream
   entries pending in a group of their own, at batch sizes 1, 10, 100 and batch-size,
   ~10,000 events per round trip, encoding included in the timing;
4. memory: ``used_memory`` growth per profile (an IDENTIFY with 3 traits and an email,
   then 2 TRACKs: 3 traits, 2 identifiers, 3 counters, its remembered eventIds
   deducted), then per remembered eventId (5 more TRACKs per profile in the counter
   buckets it holds: only its seen hash grows), read while no AOF rewrite runs;
5. merge cost, as Redis accounts it (``INFO commandstats``, EVALSHA usec): events/4
   ALIAS that each merge two small profiles (3 traits, 2 counters of 3 buckets, 2 and 3
   identifiers), then as many that each link a new anonymousId to one of the
   survivors, both at batch-size: usec per event of each kind, and their difference.

It prints a table next to DESIGN.md's reference figures, then one JSON line.

The modules, by concern: ``workload`` (the events of each phase), ``http`` (the HTTP
driver and the end-to-end counters), ``micro`` (the Redis micro-benchmarks, memory and
merge cost), ``report`` (the table and the JSON line), ``run`` (``run_bench``: the
phases in order, the cleanup).
"""

from __future__ import annotations

from cdp.bench.run import Options, run_bench

__all__ = ["Options", "run_bench"]

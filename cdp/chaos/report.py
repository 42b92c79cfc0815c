"""``cdp chaos``: run the fault suite against a stack of its own and print the verdict.

The table has one row per fault (and ``none`` for the quiet start, ``(final state)``
for what no single fault owns: profiles against the model, segment events): how many
times it was injected, the events accepted in its rounds, how many of those were
lost or applied twice, and the anomalies. Then every kind of anomaly with examples.
The exit status is 1 when there is any anomaly (under ``appendfsync everysec`` the
acknowledged events a kill -9 of Redis loses are the documented bound, not one).
"""

from __future__ import annotations

import asyncio
import shutil
import sys
import tempfile
import time
from pathlib import Path

from cdp.chaos.checker import FINAL, NOTES, Verdict
from cdp.chaos.runner import ChaosConfig, ChaosRun

HEADER = ("fault", "count", "events accepted", "lost", "applied twice", "anomalies")
FIGURES = ("accepted", "lost", "doubled", "anomalies")


def render(verdict: Verdict) -> str:
    rows: list[tuple[str, ...]] = [HEADER]
    for row in verdict.rows.values():
        count = "-" if row.fault in ("none", FINAL) else str(row.count)
        figures = (row.accepted, row.lost, row.doubled, row.anomalies)
        rows.append((row.fault, count, *map(str, figures)))
    every = verdict.rows.values()
    totals = [sum(getattr(r, a) for r in every) for a in ("count", *FIGURES)]
    rows.append(("total", *map(str, totals)))
    widths = [max(len(r[i]) for r in rows) for i in range(len(HEADER))]
    lines = []
    for n, r in enumerate(rows):
        cells = [r[0].ljust(widths[0])]
        cells += [cell.rjust(width) for cell, width in zip(r[1:], widths[1:], strict=True)]
        lines.append("| " + " | ".join(cells) + " |")
        if n == 0:
            lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for kind, times in sorted(verdict.kinds.items()):
        label = "note" if kind in NOTES else "ANOMALY"
        lines.append(f"\n{label}: {kind} ({times})")
        lines.extend(f"  - {example}" for example in verdict.examples[kind])
    if verdict.everysec_loss_ages_ms:
        lines.append(
            f"\neverysec: {len(verdict.everysec_loss_ages_ms)} acknowledged events lost by "
            f"kill -9 of Redis, acknowledged at most {max(verdict.everysec_loss_ages_ms)} ms "
            "before the kill"
        )
    return "\n".join(lines)


def main_chaos(
    minutes: float,
    appendfsync: str,
    workers: int,
    users: int,
    concurrency: int,
    seed: int | None,
    data_dir: str | None,
) -> int:
    run_dir = Path(data_dir) if data_dir else Path(tempfile.mkdtemp(prefix="cdp-chaos-"))
    seed = seed if seed is not None else int(time.time())
    config = ChaosConfig(
        run_dir=run_dir,
        minutes=minutes,
        appendfsync=appendfsync,
        workers=workers,
        users=users,
        concurrency=concurrency,
        seed=seed,
    )

    def progress(line: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {line}", file=sys.stderr, flush=True)

    run = ChaosRun(config, progress)
    progress(
        f"cdp chaos: {minutes:g} min, appendfsync {appendfsync}, {workers} workers, "
        f"seed {seed}, run directory {run_dir}"
    )
    try:
        run.start()
        asyncio.run(run.drive())
        progress("faults over; waiting for the pipeline to settle")
        run.settle()
        verdict = run.check()
    finally:
        run.stop()
    print(render(verdict))
    if verdict.ok and not data_dir:
        shutil.rmtree(run_dir, ignore_errors=True)
    else:
        print(f"\nhistory, logs and the Redis data: {run_dir}")
    return 0 if verdict.ok else 1

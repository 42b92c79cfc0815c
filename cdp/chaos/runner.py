"""A fault run from start to verdict: stack up, load and faults, settle, check.

``ChaosRun(config)``: ``start()`` brings up the cluster; ``drive()`` sends load while
the nemesis strikes (the faults of ``config.faults`` in order, else shuffled rounds of
every fault until ``config.minutes`` have passed), with quiet seconds before the
first fault and after each; ``settle()`` waits until every stored entry is read and
acknowledged and no profile awaits evaluation; ``check()`` returns the verdict (it can
be called again, e.g. after tampering with Redis in a test); ``stop()`` ends it all.

A process that exits on its own during the run (nobody killed it) is restarted, as
``cdp up`` or an orchestrator would, and reported as an anomaly.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cdp import keys
from cdp.chaos.checker import Verdict, check
from cdp.chaos.client import LoadClient
from cdp.chaos.cluster import Cluster
from cdp.chaos.history import History
from cdp.chaos.nemesis import FAULTS, Nemesis, Timing
from cdp.chaos.workload import WRITE_KEY, Workload
from cdp.clock import wall_ms
from cdp.connect import SyncClient, sync_client
from cdp.settings import load_settings, parse_duration_ms
from cdp.streams import text


@dataclass(frozen=True)
class ChaosConfig:
    run_dir: Path
    faults: tuple[str, ...] = ()  # a fixed schedule; empty: rounds until `minutes` pass
    minutes: float = 3.0
    appendfsync: str = "always"
    workers: int = 2
    users: int = 100
    concurrency: int = 8
    lease_ttl: str = "2s"
    seed: int = 0
    quiet_s: float = 3.0
    settle_s: float = 60.0
    timing: dict[str, float] = field(default_factory=dict)  # Timing overrides

    def env(self) -> dict[str, str]:
        """The settings of every process of the stack, as CDP_* variables."""
        dedup_minutes = max(10, int(self.minutes) + 15)  # outlives the run: see state.py
        return {
            "CDP_CLOCK": "system",
            "CDP_LEASE_TTL": self.lease_ttl,
            "CDP_WINDOW_SIZE": "1s",
            "CDP_TICKER_INTERVAL": "100ms",
            "CDP_STREAM_RETENTION": "7d",  # keep every entry for the checker
            "CDP_DEDUP_TTL": f"{dedup_minutes}m",
            "CDP_WRITE_KEYS": f"{WRITE_KEY}={WRITE_KEY}",
            "CDP_REDIS_APPENDFSYNC": self.appendfsync,
            "CDP_LOG_FORMAT": "json",
            "CDP_LOG_LEVEL": "info",
        }


class ChaosRun:
    def __init__(self, config: ChaosConfig, progress: Callable[[str], None] = print) -> None:
        self.config = config
        self.progress = progress
        self.settings = load_settings(env=config.env())
        self.cluster = Cluster(config.run_dir, config.workers, config.appendfsync, config.env())
        self.history = History()
        self.rng = random.Random(config.seed)
        self.exits: list[str] = []
        self.settled = True

    def start(self) -> None:
        self.config.run_dir.mkdir(parents=True, exist_ok=True)
        self.cluster.start()

    def schedule(self) -> Iterator[str]:
        if self.config.faults:
            yield from self.config.faults
            return
        deadline = time.monotonic() + self.config.minutes * 60
        while True:
            for fault in self.rng.sample(FAULTS, len(FAULTS)):
                if time.monotonic() >= deadline:
                    return
                yield fault

    async def drive(self) -> None:
        rng = random.Random(self.rng.random())
        workload = Workload(self.config.users, f"s{self.config.seed}", rng)
        client = LoadClient(self.cluster.api_url, workload, self.history, self.config.concurrency)
        lease_ttl_s = parse_duration_ms(self.config.lease_ttl) / 1000
        nemesis = Nemesis(
            self.cluster, self.history, self.rng, Timing(lease_ttl_s, **self.config.timing)
        )
        stop = asyncio.Event()
        load = asyncio.create_task(client.run(stop))
        supervisor = asyncio.create_task(self._supervise())
        try:
            await asyncio.sleep(self.config.quiet_s)
            for n, fault in enumerate(self.schedule(), 1):
                accepted = sum(op.acked for op in self.history.ops.values())
                self.progress(f"round {n}: {fault} ({accepted} events accepted so far)")
                await nemesis.strike(fault)
                await asyncio.sleep(self.config.quiet_s)
        finally:
            stop.set()
            await load
            supervisor.cancel()

    async def _supervise(self) -> None:
        while True:
            for name, status in self.cluster.exited().items():
                self.exits.append(f"{name} exited with status {status}; restarted")
                self.progress(self.exits[-1])
                await asyncio.to_thread(self.cluster.restart, name)
            await asyncio.sleep(0.5)

    def settle(self) -> bool:
        """Wait (up to settle_s) until nothing is unread, pending or awaiting evaluation."""
        client = sync_client(self.cluster.redis.url, socket_timeout=10)
        deadline = time.monotonic() + self.config.settle_s
        try:
            while not self._quiet(client):
                if time.monotonic() > deadline:
                    self.settled = False
                    return False
                time.sleep(0.2)
            return True
        finally:
            client.close()

    def _quiet(self, client: SyncClient) -> bool:
        soon = wall_ms() + 2 * parse_duration_ms(self.config.lease_ttl)
        if client.zcount(keys.SEGMENTS_DUE, "-inf", soon):
            return False
        for p in range(self.settings.partitions):
            groups: Any = client.xinfo_groups(keys.stream(p))
            group = next((g for g in groups if text(g["name"]) == keys.GROUP), None)
            last: Any = client.xrevrange(keys.stream(p), count=1)
            if group is None or group["pending"]:
                return False
            if last and text(last[0][0]) != text(group["last-delivered-id"]):
                return False
        return True

    def check(self) -> Verdict:
        client = sync_client(self.cluster.redis.url, socket_timeout=30)
        try:
            verdict = check(client, self.history, self.settings, self.config.appendfsync)
        finally:
            client.close()
        for line in self.exits:
            verdict.add("a process exited on its own", line)
        if not self.settled:
            verdict.add(
                "not settled: entries unread or pending at the end",
                f"after {self.config.settle_s:.0f}s of quiet",
            )
        return verdict

    def stop(self) -> None:
        """Stop every process (also after a failed or interrupted start); keep the history."""
        if self.config.run_dir.is_dir():
            self.history.dump(self.config.run_dir / "history.jsonl")
        self.cluster.stop()

"""The nemesis: the faults of a run, each injected into a real process and then healed.

| fault          | what it does                                                          |
|----------------|-----------------------------------------------------------------------|
| `worker-kill`  | SIGKILL of one worker under load; a new worker starts after a moment |
| `worker-pause` | SIGSTOP of one worker for 2.5 lease-ttl (its leases expire), SIGCONT |
| `redis-kill`   | kill -9 of redis-server, restarted on the same data directory (AOF)  |
| `redis-pause`  | SIGSTOP of redis-server (unreachable: every client times out), SIGCONT |
| `redis-oom`    | CONFIG SET maxmemory below the memory in use, noeviction; then room   |
| `api-kill`     | SIGKILL of the API with requests in flight, restarted on its port     |

Blocking steps (restarts, waiting for a process) run in a thread, so the load client
keeps sending through every fault; the round records when the fault struck and when
it was healed.
"""

from __future__ import annotations

import asyncio
import random
import signal
import time
from dataclasses import dataclass

from cdp.chaos.cluster import Cluster
from cdp.chaos.history import History, Round
from cdp.connect import sync_client
from cdp.errors import ChaosError

FAULTS = ("worker-kill", "worker-pause", "redis-kill", "redis-pause", "redis-oom", "api-kill")


@dataclass(frozen=True, slots=True)
class Timing:
    lease_ttl_s: float
    redis_pause_s: float = 6.0  # past the API's 5 s socket timeout: requests fail
    oom_s: float = 4.0
    restart_after_s: float = 0.5


class Nemesis:
    def __init__(
        self, cluster: Cluster, history: History, rng: random.Random, timing: Timing
    ) -> None:
        self.cluster = cluster
        self.history = history
        self.rng = rng
        self.timing = timing

    async def strike(self, fault: str) -> Round:
        """Begin a round, inject ``fault``, wait, heal it; returns the round."""
        if fault not in FAULTS:
            raise ChaosError(f"unknown fault {fault!r}; known: {', '.join(FAULTS)}")
        round_ = self.history.begin_round(fault)
        await getattr(self, "_" + fault.replace("-", "_"))(round_)
        round_.healed_at = time.time()
        return round_

    def _hit(self, round_: Round, name: str, sig: signal.Signals) -> None:
        round_.hit_at = time.time()
        self.cluster.signal(name, sig)

    async def _worker_kill(self, round_: Round) -> None:
        name = self.rng.choice(self.cluster.worker_names)
        round_.detail = name
        await asyncio.to_thread(self._hit, round_, name, signal.SIGKILL)
        await asyncio.sleep(self.timing.restart_after_s)
        await asyncio.to_thread(self.cluster.restart, name)

    async def _worker_pause(self, round_: Round) -> None:
        name = self.rng.choice(self.cluster.worker_names)
        round_.detail = name
        self._hit(round_, name, signal.SIGSTOP)
        await asyncio.sleep(2.5 * self.timing.lease_ttl_s)
        self.cluster.signal(name, signal.SIGCONT)

    async def _redis_kill(self, round_: Round) -> None:
        await asyncio.to_thread(self._hit, round_, "redis", signal.SIGKILL)
        await asyncio.sleep(self.timing.restart_after_s)
        await asyncio.to_thread(self.cluster.restart, "redis")

    async def _redis_pause(self, round_: Round) -> None:
        self._hit(round_, "redis", signal.SIGSTOP)
        await asyncio.sleep(self.timing.redis_pause_s)
        self.cluster.signal("redis", signal.SIGCONT)

    async def _redis_oom(self, round_: Round) -> None:
        client = sync_client(
            self.cluster.redis.url, "no", socket_timeout=5
        )  # this node: INFO, CONFIG SET
        try:
            used = int(client.info("memory")["used_memory"])
            cap = max(1 << 20, used - (64 << 10))
            client.config_set("maxmemory-policy", "noeviction")
            client.config_set("maxmemory", cap)
            round_.hit_at = time.time()
            round_.detail = f"maxmemory {cap} with {used} in use"
            await asyncio.sleep(self.timing.oom_s)
            client.config_set("maxmemory", 0)
        finally:
            client.close()

    async def _api_kill(self, round_: Round) -> None:
        await asyncio.to_thread(self._hit, round_, "api", signal.SIGKILL)
        await asyncio.sleep(self.timing.restart_after_s)
        await asyncio.to_thread(self.cluster.restart, "api")

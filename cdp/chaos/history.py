"""The history of a fault run: every operation, every attempt and its answer, the faults.

As in Jepsen, the load client records what it invoked and what it was told, and the
checker judges the outcome against it. An operation (one call, ``workload.Call``) is

- *acknowledged* when an attempt was answered 2xx (202 on ``/cdp/ingest``, 200 on
  ``/v1``): it must be applied exactly once;
- otherwise *unacknowledged*: every attempt was answered 503 (the server says it did
  not store it) or got no answer (the API died, a timeout): it may be applied at most
  once.

The run is cut into rounds, one per injected fault (round 0, ``none``, is the quiet
start), each recording when its fault struck; the checker counts an operation in the
round of the last fault that struck while it could still be unapplied.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from cdp.chaos.workload import Call, Request


@dataclass(slots=True)
class Attempt:
    started: float  # time.time()
    ended: float = 0.0
    status: int | None = None  # None: no answer (connection error or client timeout)
    error: str = ""

    @property
    def acked(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


@dataclass(slots=True)
class Op:
    call: Call
    route: str
    round: int  # the round it was first sent in
    attempts: list[Attempt]  # shared by the calls of one request

    @property
    def acked(self) -> bool:
        return any(a.acked for a in self.attempts)

    @property
    def acked_at(self) -> float | None:
        return next((a.ended for a in self.attempts if a.acked), None)

    @property
    def answered_503(self) -> bool:
        return any(a.status == 503 for a in self.attempts)


@dataclass(slots=True)
class Round:
    fault: str
    started: float
    hit_at: float = 0.0  # when the fault struck (the kill, the stop, the memory cap)
    healed_at: float = 0.0
    detail: str = ""


@dataclass
class History:
    ops: dict[str, Op] = field(default_factory=dict)
    rounds: list[Round] = field(default_factory=lambda: [Round("none", time.time())])

    @property
    def current(self) -> int:
        return len(self.rounds) - 1

    def begin_round(self, fault: str) -> Round:
        self.rounds.append(Round(fault, time.time()))
        return self.rounds[-1]

    def invoke(self, request: Request) -> list[Attempt]:
        """Record the operations of a request about to be sent; returns its attempt list."""
        attempts: list[Attempt] = []
        for call in request.calls:
            self.ops[call.tag] = Op(call, request.route, self.current, attempts)
        return attempts

    def dump(self, path: Path) -> None:
        """One JSON line per operation, then one per round: the run, for a post-mortem."""
        with path.open("w") as out:
            for op in self.ops.values():
                row = {
                    "op": asdict(op.call),
                    "route": op.route,
                    "round": op.round,
                    "attempts": [asdict(a) for a in op.attempts],
                }
                out.write(json.dumps(row) + "\n")
            for n, r in enumerate(self.rounds):
                out.write(json.dumps({"round": n, **asdict(r)}) + "\n")

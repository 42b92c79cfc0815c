"""The debugger's tap: while the console's debugger is open, a copy of every event
this API process stores goes to ``cdp:debugger`` (``cdp.debugger`` reads it).

Each call of ``GET /cdp/console/events`` sets the watch flag ``cdp:debugger:watch``
(PX ``WATCH_MS``) and this process's ``watching`` at once; a background task
(``run``, in the app's ``cleanup_ctx``) reads the flag at most once a second, so
other processes follow within a second and every process stops within a second
of the flag expiring. While watching, the publisher hands ``copy`` each request's
events once the publish script answered (partition, entry id, index in the entry,
the event's JSON as stored): they go to an in-memory buffer of at most ``bound``
items (the oldest dropped and counted when Redis is slow), which the same task
flushes every ``FLUSH_S`` (and at shutdown) as one XADD of one entry, field ``t`` = a
JSON array of the items, MAXLEN ~ (``debugger-maxlen`` // items in the entry): about
``debugger-maxlen`` events, at most about twice that when flushes shrink. One entry
per flush costs Redis ~0.1-2 µs per event against ~7-12 µs for one entry per event
(an XADD each, in a script). A failed flush is logged (rate-limited) and its
items are forgotten. Not watching, a request pays one attribute read.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque

from cdp import keys
from cdp.connect import Client
from cdp.debugger import TAP_FIELD, tap_entry, tap_item
from cdp.logs import TroubleLog

WATCH_MS = 30_000  # the flag outlives the debugger's last call this long
READ_FLAG_S = 1.0  # the flag is read at most this often
FLUSH_S = 0.1


class DebuggerTap:
    def __init__(self, redis: Client, maxlen: int, trouble: TroubleLog) -> None:
        self._redis = redis
        self._maxlen = maxlen
        self._trouble = trouble
        self.bound = maxlen  # more than the stream keeps would be trimmed at once
        self.buffer: deque[bytes] = deque()
        self.dropped = 0  # items dropped from a full buffer or by a failed flush
        self._reported = 0  # the drops logged so far
        self.watching = False
        self._next_read = 0.0  # monotonic time of the next read of the flag

    def copy(
        self, partitions: list[int], of_event: list[int], ids: list[str], bodies: list[bytes]
    ) -> None:
        """Buffer a stored request's events: the partition of each entry, the entry of
        each event, each event's entry id and JSON."""
        seen = [0] * len(partitions)
        for entry, entry_id, body in zip(of_event, ids, bodies, strict=True):
            index = seen[entry]
            seen[entry] += 1
            if len(self.buffer) >= self.bound:
                self.buffer.popleft()
                self.dropped += 1
            self.buffer.append(tap_item(partitions[entry], entry_id, index, body))

    async def watch(self) -> None:
        """Set the flag (a debugger call): this process taps from now on."""
        self.watching = True
        self._next_read = time.monotonic() + READ_FLAG_S
        await self._redis.set(keys.DEBUGGER_WATCH, "1", px=WATCH_MS)

    async def flush(self) -> None:
        if self.dropped > self._reported:
            self._trouble.note("the debugger's tap dropped events", dropped=self.dropped)
            self._reported = self.dropped
        if not self.buffer:
            return
        items = list(self.buffer)
        self.buffer.clear()
        try:
            await self._redis.xadd(
                keys.DEBUGGER,
                {TAP_FIELD: tap_entry(items)},
                maxlen=max(1, self._maxlen // len(items)),
                approximate=True,
            )
        except Exception as exc:  # best-effort: never more than a log line
            self.dropped += len(items)
            self._trouble.note("the debugger's tap could not flush", error=str(exc))

    async def _read_flag(self) -> None:
        now = time.monotonic()
        if now < self._next_read:
            return
        self._next_read = now + READ_FLAG_S
        try:
            self.watching = bool(await self._redis.exists(keys.DEBUGGER_WATCH))
        except Exception as exc:
            self._trouble.note("the debugger's watch flag could not be read", error=str(exc))

    async def run(self) -> None:
        """Read the flag once a second and flush every FLUSH_S, until cancelled."""
        while True:
            await self._read_flag()
            await self.flush()
            await asyncio.sleep(FLUSH_S)

    async def close(self, task: asyncio.Task[None]) -> None:
        """Stop ``run``'s task, then flush what is left (shutdown)."""
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await self.flush()

"""The load client: concurrent senders over the real HTTP API, recording the history.

Each sender takes the workload's next request, sends it and records every attempt.
It retries as an SDK does, but only where a retry cannot duplicate: after a 503 (the
server says nothing was stored), and after a 504 (Redis did not answer: stored or not,
unknown), a 500 (partly stored, on a cluster) or no answer at all (the API died, a
timeout) only when every call of the request names itself (a keyed request: the retry
is deduplicated). An unkeyed request without an answer is left unacknowledged: it may
or may not have been stored, and the checker allows it to be applied at most once.
"""

from __future__ import annotations

import asyncio
import time

import aiohttp

from cdp.chaos.history import Attempt, History
from cdp.chaos.workload import Request, Workload
from cdp.clock import wall_ms


class LoadClient:
    def __init__(
        self,
        base_url: str,
        workload: Workload,
        history: History,
        concurrency: int = 8,
        retry_for: float = 30.0,
        timeout: float = 20.0,
        pause: float = 0.0,
    ) -> None:
        self.base_url = base_url
        self.workload = workload
        self.history = history
        self.concurrency = concurrency
        self.retry_for = retry_for
        self.timeout = timeout
        self.pause = pause  # seconds each sender waits between requests (pacing)

    async def run(self, stop: asyncio.Event) -> None:
        """Send until ``stop`` is set; requests in flight finish (retries included)."""
        timeout = aiohttp.ClientTimeout(total=self.timeout)
        connector = aiohttp.TCPConnector(limit=self.concurrency)
        async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
            await asyncio.gather(*(self._sender(session, stop) for _ in range(self.concurrency)))

    async def _sender(self, session: aiohttp.ClientSession, stop: asyncio.Event) -> None:
        while not stop.is_set():
            request = self.workload.next_request(wall_ms())
            await self.send(session, request)
            if self.pause:
                await asyncio.sleep(self.pause)

    async def send(self, session: aiohttp.ClientSession, request: Request) -> None:
        attempts = self.history.invoke(request)
        deadline = time.monotonic() + self.retry_for
        delay = 0.1
        while True:
            attempt = Attempt(time.time())
            attempts.append(attempt)
            try:
                async with session.post(
                    self.base_url + request.route, data=request.body, headers=request.headers
                ) as resp:
                    answer = await resp.read()
                    attempt.status = resp.status
                    if resp.status >= 300 or b'"rejected"' in answer:
                        attempt.error = answer[:300].decode(errors="replace")
            except (aiohttp.ClientError, TimeoutError) as exc:
                attempt.error = f"{type(exc).__name__}: {exc}"
            attempt.ended = time.time()
            if attempt.acked:
                return
            definite = attempt.status == 503
            # 500: partly stored (a cluster), like a 504 for what a retry may duplicate.
            if not (definite or (attempt.status in (None, 500, 504) and request.keyed)):
                return
            if time.monotonic() > deadline:
                return
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)

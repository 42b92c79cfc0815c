"""The Python cost of the API's two hot handlers, without HTTP, body reading or Redis.

    python benchmarks/api_handlers.py [--tree CHECKOUT]

``POST /v1/batch`` with 100 track calls (the shape of issue10.py's part 2) and one
``POST /cdp/ingest`` event (part 1) are handled in a loop by the real handlers of the
tree it runs from (or of ``--tree``, another checkout), with ``read_body`` and the
publisher stubbed (the publisher's encoding and round trip are not the handlers'
cost). Prints CPU microseconds per request (``process_time``, best of 5). Run it on
two checkouts one after the other to compare them: the figures move with the
machine's load, their ratio much less.
"""

from __future__ import annotations

import asyncio
import base64
import json
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if "--tree" in sys.argv:  # measure another checkout's handlers (e.g. main's)
    ROOT = Path(sys.argv[sys.argv.index("--tree") + 1]).resolve()
sys.path.insert(0, str(ROOT))

from cdp.api import appkeys, tracking  # noqa: E402
from cdp.api import ingest as ingest_module  # noqa: E402
from cdp.api import requests as requests_module  # noqa: E402
from cdp.settings import load_settings  # noqa: E402

NOW_MS = 1_764_576_000_000  # 2025-12-01T08:00:00Z
TS = "2025-12-01T08:00:00Z"


class Clock:
    async def now_ms(self) -> int:
        return NOW_MS


class Publisher:
    async def publish_many(self, events: list[Any]) -> list[str]:
        return ["0-1"] * len(events)

    async def publish(self, event: Any) -> str:
        return "0-1"


class Request:
    """What the two handlers read of an aiohttp request."""

    def __init__(self, body: bytes, path: str) -> None:
        settings = load_settings(env={"CDP_WRITE_KEYS": "benchkey=bench"})
        self.app = {
            appkeys.SETTINGS: settings,
            appkeys.CLOCK: Clock(),
            appkeys.PUBLISHER: Publisher(),
        }
        self.headers = {"Authorization": "Basic " + base64.b64encode(b"benchkey:").decode()}
        self.path = path
        self.body = body


async def _read_body(request: Any, limit: int) -> bytes:
    return bytes(request.body)


def _bodies() -> tuple[bytes, bytes]:
    calls = [
        {
            "type": "track",
            "messageId": f"m-{i}",
            "timestamp": TS,
            "userId": f"u{i}",
            "event": "Page Viewed",
        }
        for i in range(100)
    ]
    one = {"eventId": "e-1", "ts": TS, "payload": {"type": "TRACK", "userId": "u1", "name": "X"}}
    return json.dumps({"batch": calls}).encode(), json.dumps(one).encode()


async def measure() -> dict[str, float]:
    requests_module.read_body = _read_body  # type: ignore[assignment]
    ingest_module.read_body = _read_body  # type: ignore[assignment]
    batch, one = _bodies()
    out = {}
    cases = (
        ("/v1/batch x100", tracking.batch, Request(batch, "/v1/batch"), 300),
        ("/cdp/ingest", ingest_module.ingest, Request(one, "/cdp/ingest"), 20_000),
    )
    for name, handler, request, n in cases:
        for _ in range(50):  # warm-up
            await handler(request)  # type: ignore[arg-type]
        best = float("inf")
        for _ in range(5):
            t0 = time.process_time()
            for _ in range(n):
                await handler(request)  # type: ignore[arg-type]
            best = min(best, (time.process_time() - t0) / n)
        out[name] = best * 1e6
    return out


def main() -> int:
    label = str(ROOT)
    figures = asyncio.run(measure())
    shown = ", ".join(f"{name} {us:,.1f} us" for name, us in figures.items())
    print(f"{label}: {shown} per request (CPU, best of 5)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

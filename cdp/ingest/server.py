"""Serving the API process: the listening socket, its limits, and a log abuse cannot flood.

``run_api(settings, host, port)`` serves ``create_app(settings)`` until SIGINT or
SIGTERM, with

- aiohttp's own decompression off: handlers inflate bodies through
  ``cdp/ingest/body.py``, bounded by the body limit;
- ``header-timeout`` as aiohttp's keep-alive timeout: a request's headers must be
  complete within it of the connection opening or of the previous answer, else the
  connection is closed (a slow-loris client holds nothing for long). The body has
  ``body-timeout`` (``read_body``);
- a cap on open client connections, ``max-connections`` but never more than half of
  what the descriptor limit leaves (each connection may need a Redis connection
  too); beyond it a connection is answered 503 and closed before anything is read,
  so the process never runs out of descriptors. The soft descriptor limit is first
  raised to the hard one, as the Go runtime does for every Go server;
- ``TroubleLog`` (``cdp.logs``): one warning per kind of trouble (slow bodies, hang-ups, the
  connection cap, the descriptor limit) per interval, with a count, never a
  traceback per occurrence.
"""

from __future__ import annotations

import asyncio
import errno
import resource
import signal
from typing import Any

import structlog
from aiohttp import web

from cdp.ingest.app import create_app
from cdp.ingest.appkeys import TROUBLE
from cdp.logs import TroubleLog
from cdp.settings import Settings

log = structlog.get_logger("cdp.api")

_BUSY_BODY = b'{"status": "error", "message": "too many connections; retry shortly"}'
_BUSY = (
    b"HTTP/1.1 503 Service Unavailable\r\n"
    b"Content-Type: application/json\r\n"
    b"Content-Length: " + str(len(_BUSY_BODY)).encode() + b"\r\n"
    b"Retry-After: 1\r\n"
    b"Connection: close\r\n\r\n" + _BUSY_BODY
)
_OUT_OF_DESCRIPTORS = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}


def raise_descriptor_limit() -> None:
    """Soft RLIMIT_NOFILE up to the hard limit (capped at 2**20), when allowed."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = 1 << 20 if hard == resource.RLIM_INFINITY else min(hard, 1 << 20)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            pass


def connection_limit(settings: Settings) -> int:
    """max-connections, or fewer: half of the descriptors left after a reserve."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return settings.max_connections
    reserve = min(64, soft // 4)  # listening socket, Redis, logs, the event loop...
    return max(1, min(settings.max_connections, (soft - reserve) // 2))


class _Refusal(asyncio.Protocol):
    """A connection past the cap: a 503, then closed, without reading anything."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.WriteTransport)
        transport.write(_BUSY)
        transport.close()


def _loop_exception_handler(trouble: TroubleLog) -> Any:
    def handle(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        if isinstance(exc, OSError) and exc.errno in _OUT_OF_DESCRIPTORS:
            # asyncio's accept loop reports this for every connection it cannot take.
            trouble.note("out of file descriptors", error=str(exc))
            return
        loop.default_exception_handler(context)

    return handle


async def serve(settings: Settings, host: str, port: int) -> None:
    app = create_app(settings)
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(_loop_exception_handler(app[TROUBLE]))
    runner = web.AppRunner(
        app,
        access_log=None,
        auto_decompress=False,
        keepalive_timeout=settings.header_timeout_ms / 1000,
        shutdown_timeout=5,
    )
    await runner.setup()
    server = runner.server
    assert server is not None
    limit = connection_limit(settings)

    def accept() -> asyncio.Protocol:
        if len(server.connections) >= limit:
            app[TROUBLE].note("connection limit reached; answered 503", limit=limit)
            return _Refusal()
        return server()

    listener = await loop.create_server(accept, host, port, reuse_address=True, backlog=128)
    log.info("api listening", host=host, port=port, max_connections=limit)
    stopping = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stopping.set)
    try:
        await stopping.wait()
    finally:
        listener.close()
        await runner.cleanup()


def run_api(settings: Settings, host: str, port: int) -> None:
    raise_descriptor_limit()
    asyncio.run(serve(settings, host, port))

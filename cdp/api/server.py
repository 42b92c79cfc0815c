"""Serving the API process: the listening sockets, their limits, a log abuse cannot flood.

``run_api(settings, host, port, processes)`` serves ``create_app(settings)`` until
SIGINT or SIGTERM: in this process when ``processes`` (default ``api-processes``, one
per core) is 1, else in that many child processes bound with ``SO_REUSEPORT`` under a
supervising parent (``cdp.api.processes``). Each process runs the event loop
``event-loop`` names (uvloop when installed, else asyncio's), with

- aiohttp's own decompression off: handlers inflate bodies through
  ``cdp/api/body.py``, bounded by the body limit;
- ``header-timeout`` as aiohttp's keep-alive timeout: a request's headers must be
  complete within it of the connection opening or of the previous answer, else the
  connection is closed (a slow-loris client holds nothing for long). The body has
  ``body-timeout`` (``read_body``);
- its own accept loop and a cap on open client connections: ``max-connections``, but
  never more than half of what the descriptor limit leaves (a connection may need a
  Redis connection too). Past the cap a connection is answered 503 and closed at
  once, so the process does not run out of descriptors; if it does anyway, it stops
  accepting for a second (asyncio's own accept loop logs a traceback per refused
  accept then, and schedules a retry for each). The soft descriptor limit is first
  raised to the hard one, as the Go runtime does for every Go server;
- ``TroubleLog`` (``cdp.logs``): one warning per kind of trouble (slow bodies,
  hang-ups, the connection cap, the descriptor limit, unexpected event-loop errors)
  per interval, with a count, never a traceback per occurrence.
"""

from __future__ import annotations

import asyncio
import errno
import resource
import signal
import socket
from collections.abc import Callable
from typing import Any

import structlog
from aiohttp import web

from cdp.api.app import create_app
from cdp.api.appkeys import TROUBLE
from cdp.errors import SettingsError
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
ACCEPT_BATCH = 64  # accepts per readiness event, so one busy socket cannot starve the rest
LISTEN_BACKLOG = 1024  # a burst of connections waits here, not in SYN retries
PAUSE_S = 1.0


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
    reserve = max(32, soft // 8) + ACCEPT_BATCH  # Redis, logs, the loop, a batch
    return max(1, min(settings.max_connections, (soft - reserve) // 2))


def listen_addresses(host: str, port: int) -> list[tuple[int, Any]]:
    """(family, address) of each socket to listen on for ``host``:``port``."""
    infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    return [(family, address) for family, _, _, _, address in dict.fromkeys(infos)]


class Listener:
    """Accepts connections for an aiohttp ``web.Server`` up to ``limit`` open ones."""

    def __init__(self, server: web.Server, limit: int, trouble: TroubleLog) -> None:
        self.server = server
        self.limit = limit
        self.trouble = trouble
        self.sockets: list[socket.socket] = []
        self._starting: set[asyncio.Task[Any]] = set()
        self._loop = asyncio.get_running_loop()

    async def start(self, host: str, port: int, reuse_port: bool = False) -> None:
        for family, address in listen_addresses(host, port):
            sock = socket.create_server(
                address, family=family, backlog=LISTEN_BACKLOG, reuse_port=reuse_port
            )
            sock.setblocking(False)
            self.sockets.append(sock)
            self._loop.add_reader(sock, self._accept, sock)

    def _accept(self, sock: socket.socket) -> None:
        for _ in range(ACCEPT_BATCH):
            try:
                conn, _ = sock.accept()
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                return
            except OSError as exc:
                if exc.errno not in _OUT_OF_DESCRIPTORS:
                    raise
                self.trouble.note("out of file descriptors; not accepting for 1 s")
                self._loop.remove_reader(sock)
                self._loop.call_later(PAUSE_S, self._resume, sock)
                return
            conn.setblocking(False)
            if len(self.server.connections) + len(self._starting) >= self.limit:
                self.trouble.note("connection limit reached; answered 503", limit=self.limit)
                try:
                    conn.send(_BUSY)  # a fresh socket's send buffer takes it whole
                except OSError:
                    pass
                conn.close()
                continue
            task = self._loop.create_task(self._loop.connect_accepted_socket(self.server, conn))
            self._starting.add(task)
            task.add_done_callback(self._started)

    def _started(self, task: asyncio.Task[Any]) -> None:
        self._starting.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self.trouble.note("connection failed at start", error=str(task.exception()))

    def _resume(self, sock: socket.socket) -> None:
        if sock in self.sockets:
            self._loop.add_reader(sock, self._accept, sock)

    def close(self) -> None:
        for sock in self.sockets:
            self._loop.remove_reader(sock)
            sock.close()
        self.sockets.clear()


def _loop_exception_handler(trouble: TroubleLog) -> Any:
    """Event-loop errors nobody awaited: asyncio's report (with its traceback) once per
    kind per interval, with the count, instead of one per occurrence."""

    def handle(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        message = str(context.get("message", "event loop error"))
        if occurrences := trouble.due(message):
            loop.default_exception_handler(
                {**context, "message": f"{message} ({occurrences} since the last report)"}
            )

    return handle


async def serve(settings: Settings, host: str, port: int, reuse_port: bool = False) -> None:
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
    assert runner.server is not None
    listener = Listener(runner.server, connection_limit(settings), app[TROUBLE])
    stopping = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stopping.set)
    try:
        await listener.start(host, port, reuse_port)
        log.info(
            "api listening",
            host=host,
            port=port,
            max_connections=listener.limit,
            event_loop=type(loop).__module__.partition(".")[0],
        )
        await stopping.wait()
    finally:
        listener.close()
        await runner.cleanup()


def loop_factory(settings: Settings) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The event loop ``event-loop`` asks for: uvloop's, or None for asyncio's own."""
    if settings.event_loop == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        if settings.event_loop == "uvloop":
            raise SettingsError(
                "event-loop: uvloop is not installed (pip install uvloop), "
                "or set event-loop = asyncio"
            ) from None
        return None
    return uvloop.new_event_loop


def serve_forever(settings: Settings, host: str, port: int, reuse_port: bool = False) -> None:
    """One API process: serve until SIGINT or SIGTERM, on the configured event loop."""
    with asyncio.Runner(loop_factory=loop_factory(settings)) as runner:
        runner.run(serve(settings, host, port, reuse_port))


def run_api(settings: Settings, host: str, port: int, processes: int | None = None) -> None:
    """Serve the API with ``processes`` (default: api-processes) processes on one port."""
    raise_descriptor_limit()
    loop_factory(settings)  # a bad event-loop stops start-up here, not in each process
    count = settings.api_process_count if processes is None else processes
    if count > 1 and port == 0:
        raise SettingsError("api-processes: several processes need a fixed port, not 0")
    if count <= 1:
        serve_forever(settings, host, port)
    else:
        from cdp.api.processes import supervise

        supervise(settings, host, port, count)

"""Several API processes on one port: a parent that supervises N serving children.

``supervise(settings, host, port, n)`` (``cdp api --processes N``, setting
``api-processes``) forks N children; each binds its own listening sockets with
``SO_REUSEPORT``, so the kernel spreads new connections over them, and serves the whole
app (``cdp.api.server.serve``) with its own Redis connections and publisher. Nothing
is shared between them but Redis: the counters and gauges of ``/metrics`` are read
there (``cdp.metrics.read_snapshot``), so every process reports the Redis-wide sums;
the request latency histogram is each process's own (a scrape shows the process the
kernel gave that connection).

- SIGINT or SIGTERM to the parent: each child gets SIGTERM and finishes the requests
  in flight (aiohttp's shutdown, up to 5 s), SIGKILL 15 s later if still alive. A
  child also gets SIGTERM when the parent dies (Linux ``PR_SET_PDEATHSIG``), so a
  killed parent leaves no process holding the port.
- A child that exits without being asked is logged and restarted after a backoff:
  0.5 s, doubling up to 30 s, back to 0.5 s once a child has lived a minute. Its
  connections are lost with it (their clients saw no answer, so retry with the same
  eventId, which is deduplicated); the other children keep serving the port.
- ``max-connections`` is per process.
"""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing
import multiprocessing.connection
import os
import signal
import socket
import time
from dataclasses import dataclass, field
from multiprocessing.process import BaseProcess

import structlog

from cdp.api.server import listen_addresses, serve_forever
from cdp.settings import Settings

log = structlog.get_logger("cdp.api")

FIRST_BACKOFF_S = 0.5
MAX_BACKOFF_S = 30.0
HEALTHY_AFTER_S = 60.0  # a child that lived this long resets the backoff
STOP_GRACE_S = 15.0
_PR_SET_PDEATHSIG = 1


def _child(settings: Settings, host: str, port: int, parent: int) -> None:
    """A serving child: the parent's signal handlers off, tied to the parent's life."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:  # the parent died before prctl: nobody supervises us
        return
    serve_forever(settings, host, port, reuse_port=True)


@dataclass
class _Slot:
    """One child's place: the process in it, and when to start the next one."""

    number: int
    process: BaseProcess | None = None
    started: float = 0.0
    backoff: float = FIRST_BACKOFF_S
    restart_at: float | None = field(default=None)


class Supervisor:
    def __init__(self, settings: Settings, host: str, port: int, count: int) -> None:
        self.settings, self.host, self.port = settings, host, port
        self.slots = [_Slot(n + 1) for n in range(count)]
        self.stopping = False
        self._context = multiprocessing.get_context("fork")  # no event loop exists yet

    def _start(self, slot: _Slot) -> None:
        process = self._context.Process(
            target=_child,
            args=(self.settings, self.host, self.port, os.getpid()),
            name=f"cdp-api-{slot.number}",
        )
        process.start()
        slot.process, slot.started, slot.restart_at = process, time.monotonic(), None

    def _reap(self, slot: _Slot) -> None:
        """A child that exited unasked: log it, schedule its restart with backoff."""
        assert slot.process is not None
        now = time.monotonic()
        if now - slot.started >= HEALTHY_AFTER_S:
            slot.backoff = FIRST_BACKOFF_S
        log.warning(
            "api process exited; restarting it",
            process=slot.number,
            pid=slot.process.pid,
            exit_code=slot.process.exitcode,
            restart_in_s=slot.backoff,
        )
        slot.process.close()
        slot.process, slot.restart_at = None, now + slot.backoff
        slot.backoff = min(slot.backoff * 2, MAX_BACKOFF_S)

    def step(self, timeout: float) -> None:
        """Wait up to ``timeout`` for a child to exit; reap and restart as due."""
        live = [s.process.sentinel for s in self.slots if s.process is not None]
        multiprocessing.connection.wait(live, timeout)
        now = time.monotonic()
        for slot in self.slots:
            if self.stopping:
                return
            if slot.process is not None and slot.process.exitcode is not None:
                self._reap(slot)
            if slot.process is None and slot.restart_at is not None and now >= slot.restart_at:
                self._start(slot)

    def run(self) -> None:
        def request_stop(signum: int, frame: object) -> None:
            self.stopping = True

        signal.signal(signal.SIGINT, request_stop)
        signal.signal(signal.SIGTERM, request_stop)
        try:
            for slot in self.slots:
                self._start(slot)
            log.info("api processes started", processes=len(self.slots), port=self.port)
            while not self.stopping:
                self.step(0.2)
        finally:
            self.stop()

    def stop(self) -> None:
        """SIGTERM to every child (each finishes its requests), SIGKILL past the grace."""
        running = [s.process for s in self.slots if s.process is not None and s.process.is_alive()]
        for process in running:
            with contextlib.suppress(ProcessLookupError):
                process.terminate()
        deadline = time.monotonic() + STOP_GRACE_S
        for process in running:
            process.join(max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                process.kill()
                process.join()


def check_port(host: str, port: int) -> None:
    """Fail now, in the parent, when the port is held by a process not sharing it."""
    for family, address in listen_addresses(host, port):
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:
                probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            probe.bind(address)


def supervise(settings: Settings, host: str, port: int, count: int) -> None:
    """Run ``count`` API processes on ``host``:``port`` until SIGINT or SIGTERM."""
    check_port(host, port)
    Supervisor(settings, host, port, count).run()

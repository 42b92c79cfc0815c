"""The API process under abusive clients: compression bombs, unsupported encodings,
slow-loris headers and bodies, clients that hang up mid-body, and more connections
than the process has file descriptors. Each costs bounded CPU, time and log, and the
API keeps serving."""

from __future__ import annotations

import os
import resource
import select
import signal
import socket
import subprocess
import sys
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from cdp.embedded import free_port
from tests.support.stack import ROOT, Stack
from tests.support.values import WRITE_KEY
from tests.support.wait import wait_until

pytestmark = pytest.mark.integration

BASIC = {"Authorization": "Basic d2sxOg=="}  # wk1:


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, from /proc (no psutil needed)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def settled_cpu_seconds(pid: int) -> float:
    """The process's CPU time once it has stopped growing for a second."""
    samples = [cpu_seconds(pid)]

    def settled() -> bool:
        time.sleep(0.5)  # sampling period, not a wait for a race
        samples.append(cpu_seconds(pid))
        return len(samples) >= 3 and samples[-1] == samples[-3]

    wait_until(settled, timeout=20, message="the API's CPU time to settle")
    return samples[-1]


def api_pid(stack: Stack) -> int:
    (api,) = [p for p in stack.processes if "api" in p.args]  # type: ignore[operator]
    return api.pid


@pytest.fixture(scope="module")
def bombs() -> dict[str, bytes]:
    """400 MiB of whitespace, ~400 KB on the wire: under the 500 KB batch limit."""
    out = {}
    for name, wbits in (("gzip", 31), ("deflate", 15)):
        packer = zlib.compressobj(9, zlib.DEFLATED, wbits, 9, zlib.Z_RLE)
        chunk = b" " * (1 << 20)
        out[name] = b"".join([packer.compress(chunk) for _ in range(400)] + [packer.flush()])
    return out


@pytest.fixture
def api(stack: Stack) -> Stack:
    stack.start_api(write_keys=WRITE_KEY, header_timeout="1s", body_timeout="1s")
    return stack


# -- 10: compression ------------------------------------------------------------------


def test_a_compression_bomb_is_a_quick_413_that_costs_little_cpu(
    api: Stack, bombs: dict[str, bytes]
) -> None:
    pid = api_pid(api)
    for encoding, bomb in bombs.items():
        before = cpu_seconds(pid)
        started = time.monotonic()
        headers = {"Content-Type": "application/json", "Content-Encoding": encoding, **BASIC}
        resp = api.request("POST", "/v1/batch", bomb, headers)
        elapsed = time.monotonic() - started
        assert resp.status == 413, resp.body
        assert resp.json()["code"] == "request_too_large"
        assert elapsed < 5
        assert api.get("/healthz").status == 200
        # Including what the server does after answering (aiohttp reads, and inflated,
        # the rest of an unread body): all 400 MiB took 1.3 s of CPU, the limit takes ms.
        spent = settled_cpu_seconds(pid) - before
        assert spent < 0.4, f"the API spent {spent:.2f}s of CPU on a {encoding} bomb"


def test_an_unsupported_content_encoding_is_a_json_415(api: Stack) -> None:
    headers = {"Content-Type": "application/json", "Content-Encoding": "br", **BASIC}
    for path in ("/cdp/ingest", "/v1/track"):
        resp = api.request("POST", path, b"\x0b\x02\x80{}\x03", headers)
        assert resp.status == 415, resp.body
        body = resp.json()
        assert "'br' is not supported" in body["message"]
        if path.startswith("/v1/"):
            assert set(body) == {"code", "message"}  # Segment's error shape
        else:
            assert body["status"] == "error"


# -- 14: slow clients, hang-ups, too many connections ----------------------------------------


def trickle_until_closed(sock: socket.socket, payload: bytes, deadline_s: float) -> bytes:
    """Send ``payload`` a byte every 100 ms until the server closes the connection;
    returns what the server said. Fails if it is still open after ``deadline_s``."""
    answer = b""
    deadline = time.monotonic() + deadline_s
    for byte in payload:
        if time.monotonic() > deadline:
            raise AssertionError(f"still open after {deadline_s}s; got {answer!r}")
        if select.select([sock], [], [], 0.1)[0]:
            try:
                data = sock.recv(65536)
            except ConnectionResetError:
                return answer
            if not data:
                return answer
            answer += data
            continue
        try:
            sock.sendall(bytes([byte]))
        except (BrokenPipeError, ConnectionResetError):
            return answer
    raise AssertionError("ran out of payload before the server closed the connection")


def connect(stack: Stack) -> socket.socket:
    return socket.create_connection(("127.0.0.1", stack.api_port or 0), timeout=5)


def test_slow_headers_are_cut_off_after_the_header_timeout(api: Stack) -> None:
    with connect(api) as sock:
        sock.sendall(b"POST /cdp/ingest HTTP/1.1\r\nHost: x\r\n")
        started = time.monotonic()
        trickle_until_closed(sock, b"X-Slow: " + b"a" * 4000, deadline_s=8)
        assert time.monotonic() - started < 5
    assert api.get("/healthz").status == 200


def test_a_slow_body_is_answered_408_and_cut_off_after_the_body_timeout(api: Stack) -> None:
    with connect(api) as sock:
        sock.sendall(
            b"POST /cdp/ingest HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 4000\r\n\r\n{"
        )
        started = time.monotonic()
        answer = trickle_until_closed(sock, b" " * 3999, deadline_s=8)
        assert time.monotonic() - started < 5
    assert answer.startswith(b"HTTP/1.1 408"), answer
    assert b'"status": "error"' in answer


def api_log(stack: Stack) -> str:
    return "\n".join(p.read_text() for p in stack.log_dir.glob("*-api.log"))


def test_clients_hanging_up_mid_body_log_one_line_and_no_traceback(api: Stack) -> None:
    for _ in range(20):
        with connect(api) as sock:
            sock.sendall(
                b"POST /v1/batch HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b'Content-Length: 5000\r\n\r\n{"batch": ['
            )
    wait_until(lambda: "mid-body" in api_log(api), message="the hang-up to be logged")
    assert api.get("/healthz").status == 200
    log = api_log(api)
    assert log.count("mid-body") == 1, log
    assert "Traceback" not in log


@pytest.fixture
def low_fd_api(stack: Stack, tmp_path: Path) -> Iterator[tuple[Stack, Path]]:
    """The API process with only 128 file descriptors (soft and hard)."""

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (128, 128))

    stack.api_port = free_port()
    log_path = tmp_path / "low-fd-api.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "cdp", "api", "--port", str(stack.api_port)],
            env=stack.env(),
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=limit,
        )
    stack.processes.append(proc)
    wait_until(stack._ready, timeout=20, message="the API to answer /readyz")
    yield stack, log_path


def test_more_connections_than_descriptors_keep_the_log_small_and_the_api_alive(
    low_fd_api: tuple[Stack, Path],
) -> None:
    stack, log_path = low_fd_api
    flood: list[socket.socket] = []
    answers: dict[int, bytes] = {}

    def some_refused() -> bool:
        for i, sock in enumerate(flood):
            if i not in answers and select.select([sock], [], [], 0)[0]:
                answers[i] = sock.recv(4096)
        return any(a.startswith(b"HTTP/1.1 503") for a in answers.values())

    try:
        for _ in range(400):
            sock = connect(stack)
            sock.sendall(b"GET /healthz HTTP/1.1\r\n")  # never finished
            flood.append(sock)
        wait_until(some_refused, message="connections past the cap to be answered 503")
    finally:
        for sock in flood:
            sock.close()
    wait_until(lambda: stack.get("/healthz").status == 200, message="/healthz afterwards")
    api = stack.processes[-1]
    assert api.poll() is None
    api.send_signal(signal.SIGTERM)  # what is logged on the way out counts too
    assert api.wait(timeout=15) == 0
    log = log_path.read_text()
    assert "Traceback" not in log
    assert len(log.splitlines()) < 20, log[-3000:]

"""GET /cdp/segment-events/stream, the Server-Sent Events view of cdp:segment-events,
read over a raw socket from the real API process while a worker produces transitions:
new events as `id:`/`event: segment`/`data:` frames, resumption after Last-Event-ID
or ?from=, and ?segment= filtering."""

from __future__ import annotations

import json
import select
import signal
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest

from cdp import keys
from tests.support.stack import Stack
from tests.support.values import ADMIN_TOKEN as TOKEN
from tests.support.values import T0, iso, ms
from tests.support.wait import wait_until

pytestmark = pytest.mark.integration

PATH = "/cdp/segment-events/stream"


class EventStream:
    """A raw HTTP/1.1 client of one SSE response: ``poll()`` reads what has arrived
    (never blocking for long), decodes the chunked body and parses whole frames."""

    def __init__(self, port: int, path: str, headers: dict[str, str] | None = None) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        lines = [f"GET {path} HTTP/1.1", "Host: 127.0.0.1", "Accept: text/event-stream"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        self.raw = b""
        self.status: int | None = None
        self.headers: dict[str, str] = {}
        self.chunked = False
        self.text = b""  # decoded body not yet parsed into frames
        self.frames: list[dict[str, str]] = []
        self.comments: list[str] = []
        self.closed = False
        self.corrupt = False

    def poll(self) -> EventStream:
        while not self.closed and select.select([self.sock], [], [], 0.02)[0]:
            data = self.sock.recv(65536)
            if not data:
                self.closed = True
            self.raw += data
        self._parse()
        return self

    def _parse(self) -> None:
        if self.status is None:
            head, sep, rest = self.raw.partition(b"\r\n\r\n")
            if not sep:
                return
            status_line, *header_lines = head.decode("latin-1").split("\r\n")
            self.status = int(status_line.split()[1])
            for line in header_lines:
                name, _, value = line.partition(":")
                self.headers[name.strip().lower()] = value.strip()
            self.chunked = self.headers.get("transfer-encoding", "").lower() == "chunked"
            self.raw = rest
        if self.chunked:
            while True:
                size_line, sep, rest = self.raw.partition(b"\r\n")
                if not sep:
                    break
                try:
                    size = int(size_line.split(b";")[0], 16)
                except ValueError:  # not a chunk: the server broke the framing
                    self.corrupt = True
                    self.closed = True
                    break
                if len(rest) < size + 2:
                    break
                self.text += rest[:size]
                self.raw = rest[size + 2 :]
                if size == 0:
                    self.closed = True
                    break
        else:
            self.text += self.raw
            self.raw = b""
        while b"\n\n" in self.text:
            block, self.text = self.text.split(b"\n\n", 1)
            frame: dict[str, str] = {}
            for line in block.decode().split("\n"):
                if line.startswith(":"):
                    self.comments.append(line[1:].strip())
                    continue
                name, _, value = line.partition(":")
                frame[name] = value.removeprefix(" ")
            if frame:
                self.frames.append(frame)

    def wait_connected(self) -> None:
        wait_until(lambda: "connected" in self.poll().comments, message="the stream to start")
        assert self.status == 200
        assert self.headers["content-type"].startswith("text/event-stream")
        assert self.headers.get("cache-control") == "no-cache"

    def wait_frames(self, n: int) -> list[dict[str, str]]:
        wait_until(lambda: len(self.poll().frames) >= n, message=f"{n} frames")
        return self.frames

    def wait_for_id(self, entry_id: str) -> list[dict[str, str]]:
        wait_until(
            lambda: any(f.get("id") == entry_id for f in self.poll().frames),
            message=f"the frame of {entry_id}",
        )
        return self.frames

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def live(stack: Stack) -> Iterator[Stack]:
    stack.set_clock(T0)
    stack.start_api(admin_token=TOKEN)
    stack.start_worker("w1")
    yield stack


@pytest.fixture
def open_stream(live: Stack) -> Iterator[Any]:
    streams: list[EventStream] = []

    def open_(query: str = "", **headers: str) -> EventStream:
        assert live.api_port is not None
        stream = EventStream(
            live.api_port, PATH + query, {"Authorization": f"Bearer {TOKEN}", **headers}
        )
        streams.append(stream)
        return stream

    yield open_
    for stream in streams:
        stream.close()
    # An API that served a stream waits out its whole shutdown timeout on SIGTERM
    # (test_the_api_stops_promptly_with_a_stream_open); do not pay that on every test.
    for proc in live.processes:
        if "api" in proc.args and proc.poll() is None:
            live.kill(proc)


def entries(stack: Stack) -> list[dict[str, str]]:
    """cdp:segment-events as the frames that should carry them."""
    return [
        {"id": entry_id, "event": "segment", "data": fields["e"]}
        for entry_id, fields in stack.r.xrange(keys.SEGMENT_EVENTS)
    ]


def segment_of(frame: dict[str, str]) -> str:
    return str(json.loads(frame["data"])["payload"]["properties"]["segment"])


def produce(stack: Stack, at_ms: int, total: int, *, pro: str = "", tracks: str = "") -> None:
    """IDENTIFY ``pro`` with plan=pro and/or 5 TRACKs of ``tracks``, then wait for the
    segment events stream to hold ``total`` entries."""
    if pro:
        event_id = f"{pro}-pro-{at_ms}"
        stack.send(event_id, iso(at_ms), type="IDENTIFY", userId=pro, traits={"plan": "pro"})
    for i in range(5 if tracks else 0):
        stack.send(f"{tracks}-t{i}", iso(at_ms + i), type="TRACK", userId=tracks, name="Clicked")
    stack.set_clock(at_ms + 6_000)
    wait_until(
        lambda: stack.r.xlen(keys.SEGMENT_EVENTS) >= total, message=f"{total} segment events"
    )


def test_the_stream_sends_new_events_resumes_after_an_id_and_filters(
    live: Stack, open_stream: Any
) -> None:
    t0 = ms(T0)
    produce(live, t0, 1, pro="u0")  # before anyone listens

    from_now = open_stream()
    pro_only = open_stream("?segment=pro_plan")
    from_now.wait_connected()
    pro_only.wait_connected()

    produce(live, t0 + 7_000, 3, pro="u1", tracks="u2")  # pro_plan and power_user ENTER
    produce(live, t0 + 14_000, 4, pro="u2")  # pro_plan ENTER of the power user
    expected = entries(live)
    assert sorted(segment_of(f) for f in expected[1:3]) == ["power_user", "pro_plan"]

    # New events only, in stream order, one frame each.
    assert from_now.wait_frames(3)[:3] == expected[1:]
    # The filtered stream: up to the last event, only pro_plan frames.
    frames = pro_only.wait_for_id(expected[3]["id"])
    assert frames == [f for f in expected[1:] if segment_of(f) == "pro_plan"]

    # Resuming after an id, by header or by query; both go on live afterwards.
    after_header = open_stream(**{"Last-Event-ID": expected[1]["id"]})
    after_query = open_stream(f"?from={expected[0]['id']}")
    everything = open_stream("?from=0-0")
    power_from_start = open_stream("?from=0-0&segment=power_user&segment=reengage")
    assert after_header.wait_frames(2) == expected[2:]
    assert after_query.wait_frames(3) == expected[1:]
    assert everything.wait_frames(4) == expected
    assert power_from_start.wait_frames(1) == [f for f in expected if segment_of(f) == "power_user"]

    live.send("u1-free", iso(t0 + 21_000), type="IDENTIFY", userId="u1", traits={"plan": "free"})
    live.set_clock(t0 + 27_000)
    wait_until(lambda: live.r.xlen(keys.SEGMENT_EVENTS) >= 5, message="pro_plan EXIT")
    latest = entries(live)
    assert json.loads(latest[4]["data"])["payload"]["name"] == "pro_plan EXIT"
    assert from_now.wait_frames(4) == latest[1:]
    assert after_header.wait_frames(3) == latest[2:]
    assert after_query.wait_frames(4) == latest[1:]
    assert everything.wait_frames(5) == latest
    assert pro_only.wait_for_id(latest[4]["id"]) == [
        f for f in latest[1:] if segment_of(f) == "pro_plan"
    ]
    assert all(len(f) == 3 for f in latest)  # id, event, data: nothing else
    assert not any(s.closed for s in (from_now, pro_only, after_header, after_query, everything))


def test_a_malformed_last_event_id_is_a_400(live: Stack, open_stream: Any) -> None:
    for stream in (open_stream(**{"Last-Event-ID": "not-an-id"}), open_stream("?from=yesterday")):
        wait_until(lambda s=stream: s.poll().status is not None or s.closed, timeout=10)  # type: ignore[misc]
        assert stream.status == 400, (stream.status, stream.corrupt, stream.raw[:80])


def test_the_api_stops_promptly_with_a_stream_open(stack: Stack) -> None:
    stack.start_api(admin_token=TOKEN)
    assert stack.api_port is not None
    stream = EventStream(stack.api_port, PATH, {"Authorization": f"Bearer {TOKEN}"})
    try:
        stream.wait_connected()
        (api,) = stack.processes
        started = time.monotonic()
        api.send_signal(signal.SIGTERM)
        api.wait(timeout=15)
        assert time.monotonic() - started < 2.0
        wait_until(lambda: stream.poll().closed, timeout=5, message="the stream to end")
    finally:
        stream.close()

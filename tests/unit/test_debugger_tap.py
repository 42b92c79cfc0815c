"""The debugger's tap without Redis: its buffer keeps the newest ``bound`` items and
counts the ones it dropped; each item names its partition, entry id and index in the
entry as ``cdp.debugger`` decodes them; a failed flush drops its items, logged, and
never raises; not watching, the publisher hands it nothing."""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
import pytest

from cdp.api.tap import DebuggerTap
from cdp.debugger import TAP_FIELD, TapItem, tap_entry
from cdp.events import StreamEvent, stream_encoder
from cdp.logs import TroubleLog


def event(n: int) -> bytes:
    return stream_encoder.encode(
        StreamEvent(eventId=f"e{n}", ts=1, receivedAt=2, type="TRACK", userId="u", name="N")
    )


class FakeRedis:
    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.added: list[tuple[str, dict[str, bytes], int]] = []

    async def xadd(self, key: str, fields: dict[str, bytes], **kw: Any) -> str:
        if self.fail:
            raise ConnectionError("redis is down")
        self.added.append((key, fields, kw["maxlen"]))
        return "1-0"


def decode(raw: bytes) -> list[TapItem]:
    return msgspec.json.decode(raw, type=list[TapItem])


def test_the_buffer_keeps_the_newest_bound_items_and_counts_the_dropped() -> None:
    tap = DebuggerTap(FakeRedis(), maxlen=5, trouble=TroubleLog("test"))  # type: ignore[arg-type]
    # two requests: 3 events over partitions 7 and 2 (entries 0, 1, 0), then 4 in one
    tap.copy([7, 2], [0, 1, 0], ["10-0", "10-1", "10-0"], [event(0), event(1), event(2)])
    tap.copy([4], [0, 0, 0, 0], ["11-0"] * 4, [event(n) for n in range(3, 7)])
    assert len(tap.buffer) == 5 and tap.dropped == 2
    items = decode(tap_entry(list(tap.buffer)))
    assert [(i.partition, i.entry_id, i.index, i.event.eventId) for i in items] == [
        (7, "10-0", 1, "e2"),
        (4, "11-0", 0, "e3"),
        (4, "11-0", 1, "e4"),
        (4, "11-0", 2, "e5"),
        (4, "11-0", 3, "e6"),
    ]


def test_a_flush_is_one_entry_capped_near_maxlen_events() -> None:
    redis = FakeRedis()
    tap = DebuggerTap(redis, maxlen=100, trouble=TroubleLog("test"))  # type: ignore[arg-type]
    tap.copy([1], [0, 0, 0, 0], ["9-0"] * 4, [event(n) for n in range(4)])
    asyncio.run(tap.flush())
    asyncio.run(tap.flush())  # nothing left: no entry
    ((key, fields, maxlen),) = redis.added
    assert key == "cdp:debugger" and maxlen == 25  # 100 events' worth of 4-event entries
    assert [i.event.eventId for i in decode(fields[TAP_FIELD])] == ["e0", "e1", "e2", "e3"]
    assert not tap.buffer


def test_a_failed_flush_drops_its_items_and_never_raises() -> None:
    tap = DebuggerTap(FakeRedis(fail=True), maxlen=10, trouble=TroubleLog("test"))  # type: ignore[arg-type]
    tap.copy([1], [0, 0], ["9-0"] * 2, [event(0), event(1)])
    asyncio.run(tap.flush())
    assert tap.dropped == 2 and not tap.buffer


@pytest.mark.parametrize("watching", [False, True])
def test_the_publisher_hands_events_to_the_tap_only_while_watching(watching: bool) -> None:
    from cdp.api.publisher import Publisher

    class Stored:
        def register_script(self, script: str) -> Any:
            return type("S", (), {"sha": "x"})()

    publisher = Publisher(Stored(), 4)  # type: ignore[arg-type]
    tap = publisher.tap = DebuggerTap(FakeRedis(), 10, TroubleLog("test"))  # type: ignore[arg-type]
    tap.watching = watching

    async def run() -> list[str]:
        async def settle() -> None:
            while not publisher._queue:
                await asyncio.sleep(0)
            request = publisher._queue.popleft()
            request.answer.set_result(["5-0"])

        ev = msgspec.json.decode(event(0), type=StreamEvent)
        publisher._task = asyncio.create_task(settle())
        return await publisher.publish_many([ev])

    assert asyncio.run(run()) == ["5-0"]
    assert len(tap.buffer) == (1 if watching else 0)

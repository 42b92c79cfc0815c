"""cdp/pipeline/buffer.py: arrival classification and the per-partition window buffer."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cdp.pipeline.buffer import Arrival, PartitionBuffer, classify, read_plan

WINDOW = 5_000
GRACE = 120_000
RECEIVED = 1_759_573_800_000
WATERMARK = RECEIVED - WINDOW


@pytest.mark.parametrize(
    ("ts", "expected"),
    [
        (RECEIVED + 1_000, Arrival.ON_TIME),  # ahead of the receiver (small skew)
        (RECEIVED, Arrival.ON_TIME),
        (WATERMARK + 1, Arrival.ON_TIME),
        (WATERMARK, Arrival.LATE),  # ts <= watermark is late
        (WATERMARK - 1, Arrival.LATE),
        (WATERMARK - GRACE, Arrival.LATE),  # exactly at the grace limit: still applied
        (WATERMARK - GRACE - 1, Arrival.DROPPED),
        (WATERMARK - 24 * 3_600_000, Arrival.DROPPED),
    ],
)
def test_classify_against_the_arrival_watermark(ts, expected):
    assert classify(ts, RECEIVED, WINDOW, GRACE) == expected


@pytest.mark.parametrize(
    ("ts", "expected"),
    [
        (WATERMARK + 1, Arrival.ON_TIME),
        (WATERMARK, Arrival.LATE),
        (WATERMARK - GRACE - 1, Arrival.LATE),
        (WATERMARK - 365 * 24 * 3_600_000, Arrival.LATE),
    ],
)
def test_backfill_is_never_dropped(ts, expected):
    assert classify(ts, RECEIVED, WINDOW, GRACE, backfill=True) == expected


def test_classify_uses_the_given_window_and_grace():
    # 10 s old: late with a 5 s window, on time with a 30 s window.
    assert classify(RECEIVED - 10_000, RECEIVED, 5_000, GRACE) == Arrival.LATE
    assert classify(RECEIVED - 10_000, RECEIVED, 30_000, GRACE) == Arrival.ON_TIME
    # 3 min old: dropped with a 2 min grace, late with a 5 min one.
    assert classify(RECEIVED - 180_000, RECEIVED, WINDOW, 120_000) == Arrival.DROPPED
    assert classify(RECEIVED - 180_000, RECEIVED, WINDOW, 300_000) == Arrival.LATE


def fill(items: list[tuple[int, str, str]]) -> PartitionBuffer[str]:
    buf: PartitionBuffer[str] = PartitionBuffer()
    for ts, event_id, entry_id in items:
        assert buf.push(ts, event_id, entry_id, f"item-{entry_id}")
    return buf


def test_pop_ready_returns_events_up_to_the_watermark_in_ts_event_id_order():
    buf = fill(
        [
            (300, "b", "1-0"),
            (100, "z", "2-0"),
            (200, "c", "3-0"),
            (200, "a", "4-0"),
            (301, "a", "5-0"),
            (100, "y", "6-0"),
        ]
    )
    assert buf.pop_ready(300) == [
        ("6-0", "item-6-0"),
        ("2-0", "item-2-0"),
        ("4-0", "item-4-0"),
        ("3-0", "item-3-0"),
        ("1-0", "item-1-0"),
    ]
    assert len(buf) == 1
    assert buf.pop_ready(300) == []
    assert buf.pop_ready(301) == [("5-0", "item-5-0")]
    assert len(buf) == 0


def test_pop_ready_before_any_event_is_due_returns_nothing():
    buf = fill([(500, "a", "1-0"), (600, "b", "2-0")])
    assert buf.pop_ready(499) == []
    assert len(buf) == 2


def test_an_event_of_an_entry_read_twice_is_ignored():
    buf: PartitionBuffer[str] = PartitionBuffer()
    assert buf.push(100, "e1", "1-0", "first")
    assert not buf.push(100, "e1", "1-0", "again")  # same stream entry, read twice
    assert len(buf) == 1
    assert buf.pop_ready(1_000) == [("1-0", "first")]


def test_the_events_of_one_entry_are_buffered_each_and_the_entry_held_until_the_last():
    buf: PartitionBuffer[str] = PartitionBuffer()
    assert buf.push(100, "e1", "1-0", "a")
    assert buf.push(50, "e0", "1-0", "b")  # a second event of the same stream entry
    assert buf.push(70, "e2", "2-0", "c")
    assert (len(buf), buf.entries) == (3, 2)
    assert buf.pop_ready(60) == [("1-0", "b")]
    assert "1-0" in buf and buf.entries == 2
    assert buf.pop_ready(1_000) == [("2-0", "c"), ("1-0", "a")]
    assert "1-0" not in buf and buf.entries == 0


def test_same_event_id_in_two_entries_is_kept_twice():
    """Two stream entries of one eventId: the buffer keeps both, dedup is the script's."""
    buf = fill([(100, "e1", "1-0"), (100, "e1", "2-0")])
    assert [entry for entry, _ in buf.pop_ready(100)] == ["1-0", "2-0"]


def test_limit_is_respected_and_the_rest_stays_in_order():
    buf = fill([(ts, f"e{ts}", f"{ts}-0") for ts in (5, 3, 1, 4, 2)])
    assert [e for e, _ in buf.pop_ready(10, limit=2)] == ["1-0", "2-0"]
    assert len(buf) == 3
    assert buf.pop_ready(10, limit=0) == []
    assert [e for e, _ in buf.pop_ready(10, limit=10)] == ["3-0", "4-0", "5-0"]


def test_clear_forgets_everything():
    buf = fill([(1, "a", "1-0"), (2, "b", "2-0")])
    buf.clear()
    assert len(buf) == 0
    assert buf.pop_ready(10) == []
    assert buf.push(1, "a", "1-0", "again")  # the entry id is forgotten too


entries = st.lists(
    st.tuples(
        st.integers(min_value=0, max_value=50),  # ts: small range, many equal ts
        st.text(alphabet="abcXYZ-09", min_size=1, max_size=4),  # eventId
    ),
    max_size=60,
)


@given(entries, st.integers(min_value=-1, max_value=55), st.randoms(use_true_random=False))
def test_pop_ready_is_sorted_and_complete_whatever_the_push_order(items, watermark, rng):
    # Unique entry ids, as a stream gives them; eventIds and ts may repeat.
    events = [(ts, event_id, f"{i}-0") for i, (ts, event_id) in enumerate(items)]
    shuffled = events[:]
    rng.shuffle(shuffled)
    buf: PartitionBuffer[tuple[int, str]] = PartitionBuffer()
    for ts, event_id, entry_id in shuffled:
        buf.push(ts, event_id, entry_id, (ts, event_id))

    ready = buf.pop_ready(watermark)
    keys = [item for _, item in ready]
    assert keys == sorted(keys)
    assert all(ts <= watermark for ts, _ in keys)
    due = sorted((ts, eid) for ts, eid, _ in events if ts <= watermark)
    assert keys == due
    assert sorted(entry for entry, _ in ready) == sorted(
        entry for ts, _, entry in events if ts <= watermark
    )
    assert len(buf) == len(events) - len(due)
    rest = buf.pop_ready(10**9)
    assert [item for _, item in rest] == sorted(
        (ts, eid) for ts, eid, _ in events if ts > watermark
    )


@given(entries, st.integers(min_value=0, max_value=10))
def test_pop_ready_in_slices_equals_pop_ready_at_once(items, limit):
    events = [(ts, event_id, f"{i}-0") for i, (ts, event_id) in enumerate(items)]
    random.Random(len(events)).shuffle(events)
    whole, sliced = fill(events), fill(events)
    expected = whole.pop_ready(40)
    got: list[tuple[str, str]] = []
    while True:
        part = sliced.pop_ready(40, limit=max(limit, 1))
        assert len(part) <= max(limit, 1)
        if not part:
            break
        got.extend(part)
    assert [item for _, item in got] == [item for _, item in expected]


@given(
    n=st.integers(min_value=1, max_value=64),
    room=st.integers(min_value=-5, max_value=100_000),
    read_count=st.integers(min_value=1, max_value=2_000),
    turn=st.integers(min_value=0, max_value=1_000),
)
def test_one_read_never_asks_for_more_than_the_room(n, room, read_count, turn):
    partitions = list(range(100, 100 + n))
    chosen, count = read_plan(partitions, room, read_count, turn)
    # XREADGROUP's COUNT is per stream: the worst case is every stream full.
    assert len(chosen) * count <= max(room, 0)
    assert count <= read_count
    assert set(chosen) <= set(partitions) and len(set(chosen)) == len(chosen)
    if room > 0:
        assert chosen and count >= 1  # some progress whenever there is room
    if room >= n * read_count:
        assert (chosen, count) == (partitions, read_count)  # plenty of room: one full read


def test_with_less_room_than_partitions_every_partition_gets_its_turn():
    partitions = list(range(16))
    seen = set()
    for turn in range(16):
        chosen, count = read_plan(partitions, 3, 1_000, turn)
        assert (len(chosen), count) == (3, 1)
        seen.update(chosen)
    assert seen == set(partitions)


def test_earliest_is_the_next_event_the_watermark_passes():
    buf: PartitionBuffer[str] = PartitionBuffer()
    assert buf.earliest() is None
    buf.push(30, "c", "3-0", "c")
    buf.push(10, "a", "1-0", "a")
    buf.push(20, "b", "2-0", "b")
    assert buf.earliest() == 10
    buf.pop_ready(15)
    assert buf.earliest() == 20
    buf.pop_ready(100)
    assert buf.earliest() is None

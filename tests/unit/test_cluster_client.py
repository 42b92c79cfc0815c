"""``cdp.cluster_client``'s own routing of stream reads and its reading of redis-py's
AttributeError on a torn-down connection (the rest runs on real clusters:
tests/integration/test_cluster_slots.py, test_cluster_faults.py)."""

from __future__ import annotations

from redis.exceptions import ConnectionError as RedisConnectionError

from cdp.cluster_client import _lost, _stream_keys


def test_the_stream_keys_of_xreadgroup_and_xread() -> None:
    args = ("GROUP", "cdp", "streams", "COUNT", 10, "STREAMS", "s{p1}", "s{p2}", ">", ">")
    assert _stream_keys("XREADGROUP", args) == ["s{p1}", "s{p2}"]  # a consumer named streams
    assert _stream_keys(b"xread", (b"BLOCK", 5, b"streams", b"k", b"0")) == ["k"]
    assert _stream_keys("GET", ("k",)) == []
    assert _stream_keys("XREADGROUP", ("GROUP", "g", "c")) == []  # redis-py's way decides


def test_a_torn_down_connection_is_a_connection_error_and_a_bug_stays_one() -> None:
    torn = AttributeError("'NoneType' object has no attribute 'writelines'")
    assert isinstance(_lost(torn), RedisConnectionError)
    bug = AttributeError("'Settings' object has no attribute 'nope'")
    assert _lost(bug) is bug

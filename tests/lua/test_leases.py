"""lua/lease_acquire-1.lua and lua/lease_release-1.lua on fakeredis.

Time never passes in these tests: a lease "about to expire" is one whose TTL the test
shortened with PEXPIRE, an expired one is one whose PEXPIREAT lies in the past.
"""

from __future__ import annotations

from collections.abc import Iterator

import fakeredis
import pytest

from cdp import keys
from cdp.scripts import calls, source

LEASE = keys.lease(3)
TTL = 5_000


class Leases:
    def __init__(self) -> None:
        self.r = fakeredis.FakeRedis(server=fakeredis.FakeServer(), decode_responses=True)
        self._acquire = self.r.register_script(source("lease_acquire"))
        self._release = self.r.register_script(source("lease_release"))

    def acquire(self, worker: str, ttl: int = TTL, key: str = LEASE) -> int:
        call = calls.lease_acquire.call(key, worker, ttl)
        return int(self._acquire(keys=call.keys, args=call.args))

    def release(self, worker: str, key: str = LEASE) -> int:
        call = calls.lease_release.call(key, worker)
        return int(self._release(keys=call.keys, args=call.args))


@pytest.fixture
def leases() -> Iterator[Leases]:
    state = Leases()
    yield state
    state.r.close()


def test_acquire_a_free_lease(leases):
    assert leases.acquire("w1") == 1
    assert leases.r.get(LEASE) == "w1"
    assert 0 < leases.r.pttl(LEASE) <= TTL


def test_lease_ttl_is_the_given_one(leases):
    assert leases.acquire("w1", ttl=250) == 1
    assert 0 < leases.r.pttl(LEASE) <= 250


def test_renewing_an_own_lease_refreshes_its_ttl(leases):
    leases.acquire("w1")
    leases.r.pexpire(LEASE, 50)  # as if it were about to expire
    assert leases.r.pttl(LEASE) <= 50
    assert leases.acquire("w1") == 1
    assert leases.r.get(LEASE) == "w1"
    assert leases.r.pttl(LEASE) > 50


def test_a_lease_held_by_another_worker_is_refused_and_untouched(leases):
    leases.acquire("w1")
    leases.r.pexpire(LEASE, 3_000)
    assert leases.acquire("w2") == 0
    assert leases.r.get(LEASE) == "w1"
    assert leases.r.pttl(LEASE) <= 3_000  # the refused call did not extend it


def test_an_expired_lease_can_be_taken_by_another_worker(leases):
    leases.acquire("w1")
    leases.r.pexpireat(LEASE, 1)  # in the past: gone
    assert leases.acquire("w2") == 1
    assert leases.r.get(LEASE) == "w2"


def test_leases_of_partitions_are_independent(leases):
    other = keys.lease(4)
    assert leases.acquire("w1") == 1
    assert leases.acquire("w2", key=other) == 1
    assert (leases.r.get(LEASE), leases.r.get(other)) == ("w1", "w2")


def test_release_only_gives_back_an_own_lease(leases):
    leases.acquire("w1")
    assert leases.release("w2") == 0
    assert leases.r.get(LEASE) == "w1"
    assert leases.r.pttl(LEASE) > 0
    assert leases.release("w1") == 1
    assert leases.r.exists(LEASE) == 0
    assert leases.release("w1") == 0  # nothing left to release


def test_a_released_lease_can_be_acquired_by_another_worker(leases):
    leases.acquire("w1")
    assert leases.acquire("w2") == 0
    leases.release("w1")
    assert leases.acquire("w2") == 1
    assert leases.r.get(LEASE) == "w2"


def test_apply_is_fenced_by_the_lease_scripts(lua, now_ms):
    """Through ``Scripts`` (async): after w2 takes the lease over, w1's apply is refused."""
    from cdp.events import StreamEvent

    lease_key = keys.lease(lua.partition)
    lua.r.delete(lease_key)
    assert lua.run(lua.scripts.lease_acquire(lease_key, "w1", TTL)) is True
    assert lua.run(lua.scripts.lease_acquire(lease_key, "w2", TTL)) is False
    assert lua.run(lua.scripts.lease_release(lease_key, "w1")) is True
    assert lua.run(lua.scripts.lease_acquire(lease_key, "w2", TTL)) is True

    ev = StreamEvent(
        eventId="e1", ts=now_ms - 1000, receivedAt=now_ms, type="IDENTIFY", userId="u1"
    )
    entries = lua.deliver([ev])
    assert lua.apply_entries(entries, worker_id="w1").lease_lost
    assert lua.r.get(keys.PROFILE_SEQ) is None
    result = lua.apply_entries(entries, worker_id="w2")
    assert (result.lease_lost, result.applied) == (False, 1)

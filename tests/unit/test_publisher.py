"""The publisher's answers when a round trip goes partly wrong (a Redis double that
answers the way redis-py does; the end-to-end faults are in test_ingest_faults.py).

- A coalesced pipeline whose replies mix stored requests and NOSCRIPT refusals answers
  the stored ones with their entry ids, whatever happens to the retry of the others.
- A connection that was never made, refused or timed out, proves nothing was sent (503);
  a round trip that was sent and not answered leaves it unknown (504).
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError
from redis.exceptions import TimeoutError as RedisTimeoutError

from cdp.api.publisher import Publisher, _maybe_executed
from cdp.errors import OutcomeUnknown
from cdp.events import StreamEvent


class _Pipe:
    def __init__(self, redis: _Redis) -> None:
        self.redis = redis
        self.calls = 0

    async def __aenter__(self) -> _Pipe:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    def evalsha(self, *args: Any) -> None:
        self.calls += 1

    async def execute(self, raise_on_error: bool = True) -> list[Any]:
        answer = self.redis.answers.pop(0)
        if isinstance(answer, BaseException):
            raise answer
        assert len(answer) == self.calls
        return list(answer)


class _Redis:
    """Answers each pipeline with the next of ``answers``; SCRIPT LOAD with ``load``."""

    def __init__(self, answers: list[Any], load: BaseException | None = None) -> None:
        self.answers = answers
        self.load = load

    def register_script(self, source: str) -> Any:
        class Registered:
            sha = "0" * 40

        return Registered()

    def pipeline(self, transaction: bool = False) -> _Pipe:
        return _Pipe(self)

    async def script_load(self, source: str) -> str:
        if self.load is not None:
            raise self.load
        return "0" * 40


def _event(n: int) -> StreamEvent:
    return StreamEvent(eventId=f"e{n}", ts=1, receivedAt=1, type="TRACK", userId=f"u{n}", name="x")


def _publish_two(redis: _Redis) -> list[Any]:
    async def run() -> list[Any]:
        publisher = Publisher(redis, 4)  # type: ignore[arg-type]
        return await asyncio.gather(
            publisher.publish(_event(1)), publisher.publish(_event(2)), return_exceptions=True
        )

    return asyncio.run(run())


def test_a_stored_request_keeps_its_answer_when_loading_the_script_fails() -> None:
    refused = RedisConnectionError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")
    redis = _Redis([[[b"1-0"], NoScriptError("NOSCRIPT")]], load=refused)
    stored, forgotten = _publish_two(redis)
    assert stored == "1-0"
    assert forgotten is refused  # never ran: the API answers 503


def test_a_stored_request_keeps_its_answer_when_the_retry_is_not_answered() -> None:
    lost = RedisConnectionError("Connection closed by server.")
    redis = _Redis([[[b"1-0"], NoScriptError("NOSCRIPT")], lost])
    stored, retried = _publish_two(redis)
    assert stored == "1-0"
    assert isinstance(retried, OutcomeUnknown)  # sent again, unanswered: 504


def test_the_retry_after_noscript_answers_from_its_own_reply() -> None:
    redis = _Redis([[[b"1-0"], NoScriptError("NOSCRIPT")], [[b"2-0"]]])
    assert _publish_two(redis) == ["1-0", "2-0"]


@pytest.mark.parametrize(
    ("error", "maybe"),
    [
        (
            RedisConnectionError("Error 111 connecting to 127.0.0.1:6379. Connection refused."),
            False,
        ),
        (RedisTimeoutError("Timeout connecting to server"), False),
        (RedisTimeoutError("Timeout reading from 127.0.0.1:6379"), True),
        (RedisConnectionError("Connection closed by server."), True),
    ],
)
def test_only_a_connection_never_made_proves_nothing_ran(error: Exception, maybe: bool) -> None:
    assert _maybe_executed(error) is maybe


def test_a_request_becomes_one_entry_per_partition_in_order_of_first_event() -> None:
    from cdp.api.publisher import entries

    grouped = entries([3, 1, 3, 3, 7], [b'{"a":0}', b'{"a":1}', b'{"a":2}', b'{"a":3}', b'{"a":4}'])
    assert grouped.partitions == [3, 1, 7]
    assert grouped.fields == [
        ("b", b'[{"a":0},{"a":2},{"a":3}]'),  # several: a JSON array, the request's order
        ("e", b'{"a":1}'),  # one: the event itself, as before
        ("e", b'{"a":4}'),
    ]
    assert grouped.of_event == [0, 1, 0, 0, 2]


def test_the_events_of_a_b_entry_decode_as_the_request_sent_them() -> None:
    from cdp.api.publisher import entries
    from cdp.events import StreamEvent, entry_events, stream_encoder

    events = [
        StreamEvent(eventId=f"e{i}", ts=i, receivedAt=9, type="TRACK", userId="u", name="x")
        for i in range(3)
    ]
    grouped = entries([0, 0, 0], [stream_encoder.encode(e) for e in events])
    ((field, value),) = grouped.fields
    assert entry_events({field.encode(): value}) == events
    assert entry_events({b"e": stream_encoder.encode(events[0])}) == events[:1]
    assert entry_events({}) is None

"""The OpenAPI document states exactly what the server accepts, no more and no less.

Each test feeds many values (generated around the edges of the grammar: whitespace of
every kind, placeholder ids in every case, times at the ends of the range, numbers
that are ids...) both to the document, as schemathesis reads it, and to the server's
own validator, and requires the same verdict. No server runs: this is the fast half
of tests/integration/test_openapi_conformance.py, which checks the same agreement
over HTTP. The patterns themselves are written once, in the server's modules, and
must appear verbatim in the document.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cdp.api.profiles import PROFILE_ID
from cdp.api.requests import WHOLE_NUMBER
from cdp.api.schemas import BLOCKED  # the placeholder values as the document states them
from cdp.api.segment_stream import STREAM_ID
from cdp.api.tracking_spec import SHORT, TYPES, to_stream_event
from cdp.errors import CdpError, EventRejected
from cdp.events import DATE_TIME, EVENT_TIME, NOT_BLANK, decode_ingest, is_blank
from cdp.identity import BLOCKED_VALUES, is_blocked
from cdp.replay import SINCE_DURATION, ReplayRequest
from cdp.segments.definitions import NAME, parse_definition
from cdp.segments.rules import DURATION
from cdp.segments.webhooks import URL, parse_subscription
from tests.support.stack import ROOT

DOCUMENT = ROOT / "cdp" / "api" / "openapi.json"
RAW = json.loads(DOCUMENT.read_text())
SCHEMA = schemathesis.openapi.from_path(DOCUMENT)
NOW = 1_759_574_700_000  # 2025-10-04T10:45:00Z
MANY = settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))


def body_allows(path: str, method: str, body: Any) -> bool:
    (media,) = [b for b in SCHEMA[path][method].body if b.media_type == "application/json"]
    return bool(media.is_valid(body))


def parameter_allows(path: str, method: str, name: str, value: Any) -> bool:
    operation = SCHEMA[path][method]
    for location in (operation.path_parameters, operation.query, operation.headers):
        for parameter in location:
            if parameter.name == name:
                return bool(parameter.is_valid(value))
    raise KeyError(name)


def accepts(validate: Any, *args: Any, **kwargs: Any) -> bool:
    try:
        validate(*args, **kwargs)
    except (CdpError, ValueError):
        return False
    return True


# -- the values: around every edge the server draws ------------------------------------

spaces = st.sampled_from(
    [chr(c) for c in range(0x110000) if chr(c).isspace()] + ["\ufeff", "\u200b", "\x00"]
)
words = st.sampled_from([*sorted(BLOCKED_VALUES), "NULL", "Nil", "unKnown", "unknown", "x"])
padded_words = st.builds(
    lambda a, w, b: a + w + b, st.text(spaces, max_size=2), words, st.text(spaces, max_size=2)
)
texts = st.one_of(
    padded_words,
    st.text(spaces, max_size=3),
    st.text(max_size=6),
    st.just("$x"),
    st.just("a" * 513),
)
numbers = st.one_of(
    st.sampled_from([0, -1, 0.0, -0.0, -1.0, 5, 5.0, 1.5, 2**53 - 1, 2**53, -(2**53), 1e300]),
    st.integers(-(2**60), 2**60),
    st.floats(allow_nan=False, allow_infinity=False),
)
scalars = st.one_of(st.none(), st.booleans(), numbers, texts)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(texts, inner, max_size=3),
    max_leaves=6,
)
clock = st.from_regex(
    r"\A[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}(:[0-9]{2}(\.[0-9]{1,8})?)?"
    r"([Zz]|[+-][0-9]{2}:?[0-9]{2})?\Z"
)
edge_times = st.sampled_from(
    [
        "1970-01-01T00:00:00Z",
        "1970-01-02T00:00:00+23:59",
        "9999-12-31T23:59:59Z",
        "9999-12-30T23:59:59-23:59",
        "0001-01-01T00:00:00+01:00",
        "0000-01-01T00:00:00Z",
        "2024-02-29T10:00:00Z",
        "2025-02-29T10:00:00Z",
        "2025-10-04T10:00:00.1234567z",
        "2025-10-04T10:00:00",
        "2025-10-04 10:00:00Z",
        "2025-10-04T24:00:00Z",
        "2025-10-04T10:00:60Z",
        "2025-10-04T10:00:00+24:00",
        "20251004T100000Z",
        "2025-10-04T10:00Z",
    ]
)
times = st.one_of(edge_times, clock, st.text(max_size=4))


# -- the patterns are the server's -------------------------------------------------------


def test_the_documents_patterns_are_the_servers() -> None:
    schemas = RAW["components"]["schemas"]
    assert schemas["EventTime"]["pattern"] == EVENT_TIME
    assert schemas["DateTime"]["pattern"] == DATE_TIME
    assert schemas["Duration"]["pattern"] == DURATION
    assert schemas["Usable"]["not"]["pattern"] == BLOCKED
    assert schemas["IngestEvent"]["properties"]["eventId"]["pattern"] == NOT_BLANK
    assert schemas["WebhookCreate"]["properties"]["url"]["pattern"] == URL
    since = schemas["ReplayRequest"]["properties"]["since"]["anyOf"]
    assert [b["pattern"] for b in since] == [DATE_TIME, SINCE_DURATION]
    paths = RAW["paths"]
    stream = {
        p["name"]: p["schema"] for p in paths["/cdp/segment-events/stream"]["get"]["parameters"]
    }
    assert stream["from"]["pattern"] == stream["Last-Event-ID"]["pattern"] == STREAM_ID.pattern
    (profile_id,) = paths["/cdp/profiles/{id}"]["get"]["parameters"]
    assert profile_id["schema"]["pattern"] == PROFILE_ID.pattern
    cursor = paths["/cdp/profiles"]["get"]["parameters"][0]
    assert cursor["schema"]["pattern"] == WHOLE_NUMBER.pattern
    name = paths["/cdp/segments/{name}"][
        "parameters" if "parameters" in paths["/cdp/segments/{name}"] else "get"
    ]
    names = name["parameters"] if isinstance(name, dict) else name
    assert names[0]["schema"]["pattern"] == NAME.pattern


def test_each_call_type_has_its_routes_in_the_document() -> None:
    routes = {path for path in RAW["paths"] if path.startswith("/v1/")}
    assert {f"/v1/{kind}" for kind in (*TYPES, *SHORT)} <= routes


# -- identifiers, blanks, times ----------------------------------------------------------


@MANY
@given(value=texts)
def test_blocked_and_blank_mean_what_the_server_means(value: str) -> None:
    import re

    assert (re.fullmatch(BLOCKED, value) is not None) == is_blocked(value)
    assert (re.search(NOT_BLANK, value) is None) == is_blank(value) == (not value.strip())


def ingest_body(**changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"eventId": "e-1", "ts": "2025-10-04T10:00:00Z"}
    payload: dict[str, Any] = {"type": "IDENTIFY", "userId": "u-1"}
    for key, value in changes.items():
        if key in ("eventId", "ts"):
            body[key] = value
        else:
            payload[key] = value
    return {**body, "payload": {k: v for k, v in payload.items() if v is not ...}}


def server_takes_ingest(body: Any) -> bool:
    raw = json.dumps(body).encode()
    return accepts(decode_ingest, raw, now_ms=NOW, max_event_bytes=10**9, max_future_skew_ms=10**16)


@MANY
@given(ts=times)
def test_event_times(ts: str) -> None:
    body = ingest_body(ts=ts)
    assert body_allows("/cdp/ingest", "POST", body) == server_takes_ingest(body), ts


@MANY
@given(
    kind=st.sampled_from(["IDENTIFY", "TRACK", "ALIAS", "PAGE"]),
    fields=st.fixed_dictionaries(
        {},
        optional={
            "userId": st.one_of(texts, numbers),
            "anonymousId": st.one_of(texts, st.none()),
            "email": st.one_of(texts, st.none()),
            "name": st.one_of(texts, st.none()),
            "traits": st.one_of(st.none(), st.dictionaries(texts, scalars, max_size=2), st.just(5)),
            "eventId": st.one_of(texts, numbers),
        },
    ),
)
def test_ingested_events(kind: str, fields: dict[str, Any]) -> None:
    changes = {"userId": ..., **fields, "type": kind}
    body = ingest_body(**changes)
    assert body_allows("/cdp/ingest", "POST", body) == server_takes_ingest(body), body


# -- Segment calls -----------------------------------------------------------------------

ids = st.one_of(texts, numbers, st.none(), st.booleans())
trait_objects = st.one_of(
    st.none(),
    st.just(5),
    st.dictionaries(
        st.sampled_from(["email", "plan"]), st.one_of(texts, numbers, st.none()), max_size=2
    ),
)
calls = st.fixed_dictionaries(
    {},
    optional={
        "userId": ids,
        "anonymousId": ids,
        "previousId": ids,
        "event": ids,
        "name": ids,
        "groupId": ids,
        "messageId": st.one_of(ids, st.just("m" * 129)),
        "traits": trait_objects,
        "context": st.one_of(
            st.none(), st.just([]), st.fixed_dictionaries({}, optional={"traits": trait_objects})
        ),
        "properties": st.one_of(st.none(), st.just({}), st.just("x")),
        "timestamp": st.one_of(st.none(), times),
        "originalTimestamp": st.one_of(st.none(), times),
        "sentAt": st.one_of(st.none(), times),
        "integrations": json_values,
        "type": json_values,
    },
)


@MANY
@given(kind=st.sampled_from([*TYPES, *SHORT]), call=calls)
def test_segment_calls(kind: str, call: dict[str, Any]) -> None:
    def convert() -> None:
        sent_at = call.get("sentAt")
        from cdp.api.tracking_spec import _time

        to_stream_event(
            call,
            SHORT.get(kind, kind),
            received_at=NOW,
            sent_at=_time(sent_at, "sentAt"),
            source="test",
        )

    assert body_allows(f"/v1/{kind}", "POST", call) == accepts(convert), call


# -- segment definitions -----------------------------------------------------------------

durations = st.one_of(
    st.sampled_from(["1ms", "10m", "24h", "7d", "0s", "1.5h", "10", " 10m", "10M", "01m", "1w"]),
    st.from_regex(r"\A[0-9]{1,17}(ms|s|m|h|d)\Z"),
    st.integers(),
)
leaf_rules = st.one_of(
    st.builds(
        lambda trait, op, value: {
            "trait": trait,
            "op": op,
            **({} if value is ... else {"value": value}),
        },
        st.one_of(texts, st.just(5)),
        st.sampled_from(["eq", "ne", "in", "exists", "contains", "gt", "gte", "lt", "lte", "nope"]),
        st.one_of(st.just(...), json_values, times, st.lists(scalars, max_size=2)),
    ),
    st.builds(
        lambda spec: {"count": spec},
        st.fixed_dictionaries(
            {},
            optional={
                "within": durations,
                "gte": st.one_of(st.integers(-2, 10**30), st.just(2.0), st.just(True)),
                "event": st.one_of(st.none(), texts),
                "extra": st.just(1),
            },
        ),
    ),
    durations.map(lambda d: {"inactive": d}),
    st.builds(
        lambda spec: {"returned": spec},
        st.fixed_dictionaries({}, optional={"after": durations, "within": durations}),
    ),
    st.sampled_from([{}, [], 5, {"all": []}, {"any": 5}, {"nope": {}}]),
)
rules = st.recursive(
    leaf_rules,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3).map(lambda rs: {"all": rs}),
        st.lists(inner, max_size=3).map(lambda rs: {"any": rs}),
        inner.map(lambda r: {"not": r}),
        st.tuples(inner, inner).map(lambda rs: {"all": [rs[0]], "any": [rs[1]]}),
    ),
    max_leaves=5,
)


@MANY
@given(rule=rules, description=st.one_of(st.just(...), texts, st.none()))
def test_segment_definitions(rule: Any, description: Any) -> None:
    body = {"rule": rule, **({} if description is ... else {"description": description})}
    allowed = body_allows("/cdp/segments/{name}", "PUT", body)
    assert allowed == accepts(parse_definition, "custom", body), body


# -- webhooks and parameters -------------------------------------------------------------

urls = st.one_of(
    st.sampled_from(
        [
            "http://127.0.0.1:9/hook",
            "https://hooks.example.com/x?a=b#c",
            "HTTP://example.com",
            "ftp://example.com",
            "http://",
            "http://exa mple.com",
            "http://user@example.com/",
            "http://example.com:65536/",
            "http://example.com:65535/",
            "http://[::1]/",
            "http://bücher.example/",
            " http://example.com",
            "http://example.com/\n",
        ]
    ),
    st.from_regex(r"\Ahttps?://[a-z0-9.:@\[\]-]{0,12}([/?#][ -~é]{0,8})?\Z"),
)


@MANY
@given(
    body=st.fixed_dictionaries(
        {},
        optional={
            "url": st.one_of(urls, st.just(5)),
            "secret": st.one_of(
                st.none(), st.just({}), texts, st.just("s" * 16), st.just("s" * 15)
            ),
            "segments": st.one_of(
                st.none(), st.just("x"), st.lists(st.one_of(texts, st.just(5)), max_size=2)
            ),
            "events": st.just([]),
        },
    )
)
def test_webhook_subscriptions(body: dict[str, Any]) -> None:
    allowed = body_allows("/cdp/webhooks", "POST", body)
    assert allowed == accepts(parse_subscription, body, "id"), body


@MANY
@given(
    body=st.one_of(
        st.fixed_dictionaries(
            {},
            optional={
                "source": st.one_of(st.sampled_from(["dropped", "dead", "DEAD"]), scalars),
                "since": st.one_of(
                    times, durations, st.from_regex(r"\A[0-9]{1,13}(ms|s|m|h|d)?\Z"), scalars
                ),
                "eventIds": st.one_of(st.none(), st.lists(st.one_of(texts, numbers), max_size=2)),
                "dryRun": st.one_of(st.booleans(), scalars),
                "extra": scalars,
            },
        ),
        json_values,
    )
)
def test_replay_requests(body: Any) -> None:
    allowed = body_allows("/cdp/replay", "POST", body)
    assert allowed == accepts(ReplayRequest.parse, body), body


@pytest.mark.parametrize(
    ("path", "name", "pattern"),
    [
        ("/cdp/profiles/{id}", "id", PROFILE_ID),
        ("/cdp/profiles", "cursor", WHOLE_NUMBER),
        ("/cdp/segment-events/stream", "Last-Event-ID", STREAM_ID),
        ("/cdp/segment-events/stream", "from", STREAM_ID),
    ],
)
@MANY
@given(
    value=st.one_of(
        texts,
        st.from_regex(r"\A(user|anon|email|p|x)?:?[0-9a-z\n-]{0,3}\Z"),
        st.from_regex(r"\A[0-9+ -]{0,22}\Z"),
        st.sampled_from(["1e100", "$", "0-0", "٣", "p1\n", "7e977b41747101bb", "9" * 19, "9" * 20]),
    )
)
def test_path_query_and_header_parameters(path: str, name: str, pattern: Any, value: str) -> None:
    assert parameter_allows(path, "GET", name, value) == (pattern.fullmatch(value) is not None), (
        value
    )


def test_a_rejection_of_the_server_is_an_event_rejected() -> None:
    """``accepts`` above reads CdpError and ValueError as a refusal: no other kind hides."""
    assert issubclass(EventRejected, CdpError)

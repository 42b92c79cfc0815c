"""The OpenAPI document against the live API: property-based (schemathesis) and seeded.

One API process and one worker run for the whole module, against the session's real
redis-server, with the admin token and a write key configured. Every answer goes
through every check schemathesis has (``not_a_server_error``, the conformance of
status, content type, headers and body, ``negative_data_rejection``: what the document
forbids is refused, ``positive_data_acceptance``: what it allows is accepted,
``missing_required_header``, ``unsupported_method``, ``ignored_auth``...), plus
``admin_routes_need_the_token`` below. Two rules no JSON Schema can state are kept out
of the way, not out of the checks: the API runs with a max-future-skew of 10,000 years
(so no event time is "in the future": the rule is tested in test_ingest_api.py), and
413, the documented answer to a body over its byte limit, counts as a refusal of
invalid data and as an acceptable answer to valid data.

The generated run is seeded (``CDP_SCHEMATHESIS_SEED``, default below) and sized by
``CDP_SCHEMATHESIS_EXAMPLES`` (fuzzed cases per operation; the coverage phase adds
its boundary and negative cases on top). CI runs the default: about 10,600 cases.
The long run, ``CDP_SCHEMATHESIS=long`` (README, Testing), fuzzes more than 3 times
deeper and adds the coverage phase to the unauthenticated cases. The last test prints
the count and fails a whole run that generated fewer than 10,000 cases (15,000 for
the long run).

- ``test_documented_answers_of_a_populated_system`` walks the operations through the
  answers random data seldom reaches (a profile, a membership, an erasure job, a
  webhook, a write key's settings, each documented 4xx...), each one validated like a
  generated case. It runs first, so the generated cases then meet a populated store.
- ``test_generated_cases_conform`` lets schemathesis generate cases for every operation
  (the document's examples, the coverage phase's boundary and negative values, then
  fuzzing; positive and negative), authenticated: ``Authorization: Bearer <token>`` on
  admin routes, HTTP Basic with the write key on /v1. Its negative cases include
  requests without the Authorization header; admin routes must answer them 401.
- ``test_unauthenticated_cases_are_refused`` generates cases with no configured
  credentials (schemathesis makes up a bearer token, and sends no Basic auth): admin
  routes answer 401, /v1 routes never accept the call.
- The SSE stream (``/cdp/segment-events/stream``) never ends, so it is left out of the
  generated cases and checked by hand: its refusals and its opening.

DELETE operations run like the others; the store is disposable.

Loading: schemathesis' lazy ``from_fixture`` loader (which could read the live
/openapi.json) fails under pytest 9.2 (it sets ``request.node._nodeid``, which pytest
9.2 no longer has), so the document is read from the file at import and every call goes
to the live server's base URL; ``test_the_served_document_is_the_file`` checks that the
server serves that very file.
"""

from __future__ import annotations

import base64
import json
import os
import urllib.request
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
import redis as redis_sync
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.errors import FailureGroup

from cdp.embedded import RedisServer
from tests.support.stack import ROOT, Stack
from tests.support.values import ADMIN_TOKEN as TOKEN
from tests.support.values import T0, WRITE_KEY
from tests.support.wait import wait_until

# ./dev test runs this module apart, in one process: pytest-xdist does not run the
# generated cases (it reports them neither run nor failed).
pytestmark = [pytest.mark.integration, pytest.mark.serial]

DOCUMENT = ROOT / "cdp" / "api" / "openapi.json"
STREAM = "/cdp/segment-events/stream"
BATCH_PATHS = {"/v1/batch", "/v1/b", "/v1/import"}
ADMIN = {"Authorization": f"Bearer {TOKEN}"}
BASIC = {"Authorization": "Basic " + base64.b64encode(f"{WRITE_KEY}:".encode()).decode()}
LONG = os.environ.get("CDP_SCHEMATHESIS") == "long"
EXAMPLES = int(os.environ.get("CDP_SCHEMATHESIS_EXAMPLES") or (200 if LONG else 60))
SEED = int(os.environ.get("CDP_SCHEMATHESIS_SEED") or 20251004)
MIN_CASES = 15_000 if LONG else 10_000
# Every check schemathesis has; 413 (a body past its byte limit) is a refusal.
CHECKS = {
    "enabled": True,
    "negative_data_rejection": {
        "expected-statuses": [
            *("400", "401", "403", "404", "405", "406", "409", "413"),
            *("415", "422", "428", "429", "5xx"),
        ]
    },
    "positive_data_acceptance": {
        "expected-statuses": ["2xx", "3xx", "401", "403", "404", "409", "413", "429", "5xx"]
    },
}
# Failure codes of schemathesis (stable: "a code is never renumbered or reused").
UNDOCUMENTED_STATUS = "ST103"
SCHEMA_VIOLATION = "ST108"
HYPOTHESIS = settings(
    deadline=None,
    database=None,  # the seed alone decides the cases
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.filter_too_much,
        HealthCheck.data_too_large,
        HealthCheck.large_base_example,
    ],
)


def _phase(case: schemathesis.Case) -> str:
    return case.meta.phase.name.value if case.meta is not None else "explicit"


def _needs_admin(operation: schemathesis.APIOperation) -> bool:
    return {"adminToken": []} in operation.definition.raw.get("security", [])


def _has_the_token(header: str | None) -> bool:
    """Does this Authorization header pass the admin token check (``cdp.api.auth``)?"""
    scheme, _, given = (header or "").partition(" ")
    return scheme.lower() == "bearer" and given.strip() == TOKEN


def admin_routes_need_the_token(
    ctx: schemathesis.CheckContext, response: schemathesis.Response, case: schemathesis.Case
) -> None:
    """Without the admin token an admin route answers 401, whatever else is wrong.

    A request that does not reach the operation at all is exempt: another method than
    the operation's (the coverage phase's unexpected-method probes), or a negative path
    parameter that no longer matches the route (aiohttp's 404/405).
    """
    operation = case.operation
    if not _needs_admin(operation) or _has_the_token(response.request.headers.get("Authorization")):
        return
    if case.method.upper() != operation.method.upper():
        return
    if (
        response.status_code in (404, 405)
        and case.meta is not None
        and case.meta.is_negative_at("path")  # type: ignore[arg-type]  # a str enum
    ):
        return
    assert response.status_code == 401, (
        f"{operation.label} without the admin token answered {response.status_code}, not 401"
    )


def _load(config: dict[str, Any]) -> schemathesis.BaseSchema:
    """The document, minus the endless stream."""
    return schemathesis.openapi.from_path(
        DOCUMENT,
        config=schemathesis.Config.from_dict({"checks": CHECKS, "seed": SEED, **config}),
    ).exclude(path=STREAM)


# Authenticated: the token on admin routes, the write key (Basic, empty password) on /v1.
authed = _load(
    {
        "generation": {"mode": "all", "max-examples": EXAMPLES},
        "auth": {
            "openapi": {
                "adminToken": {"bearer": TOKEN},
                "writeKey": {"username": WRITE_KEY, "password": ""},
            }
        },
    }
)
# No credentials configured; only the operations that declare security.
# Its coverage phase (2,500 boundary cases that all end in a 401) only in the long run.
anonymous = _load(
    {
        "generation": {"mode": "positive", "max-examples": max(EXAMPLES // 2, 5)},
        "phases": {"coverage": {"enabled": LONG}},
    }
).include(lambda ctx: bool(ctx.operation.definition.raw.get("security")))

# The bare document, for the known bugs' own tests: nothing is dropped.
strict = schemathesis.openapi.from_path(
    DOCUMENT, config=schemathesis.Config.from_dict({"checks": CHECKS})
)
# Cases sent by the generated tests, by credentials and phase; the operations they hit.
CASES: Counter[str] = Counter()
OPERATIONS_SEEN: dict[str, set[str]] = {"authenticated": set(), "anonymous": set()}


def _operations(schema: schemathesis.BaseSchema) -> list[schemathesis.APIOperation]:
    return [result.ok() for result in schema.get_all_operations()]


@pytest.fixture(scope="module")
def live(
    redis_server: RedisServer,
    tmp_path_factory: pytest.TempPathFactory,
    request: pytest.FixtureRequest,
) -> Iterator[Stack]:
    """The API (token + write key) and one worker for the module, on an empty store."""
    client = redis_sync.Redis.from_url(redis_server.url, decode_responses=True)
    client.flushall()
    stack = Stack(redis_server.url, client, tmp_path_factory.mktemp("conformance"))
    failed_before = request.session.testsfailed
    try:
        stack.set_clock(T0)
        # 10,000 years of allowed clock skew: no event time is "in the future" here.
        stack.start_api(
            write_keys=f"{WRITE_KEY}=web", admin_token=TOKEN, max_future_skew="3650000d"
        )
        stack.start_worker()
        yield stack
    finally:
        stack.close()
        if request.session.testsfailed > failed_before:
            print(stack.logs())
        client.close()


@pytest.fixture(scope="module")
def base_url(live: Stack) -> str:
    return f"http://127.0.0.1:{live.api_port}"


def call(
    base_url: str,
    method: str,
    path: str,
    status: int,
    *,
    path_parameters: dict[str, Any] | None = None,
    query: dict[str, Any] | None = None,
    body: Any = None,
    headers: dict[str, str] | None = None,
    schema: schemathesis.BaseSchema = authed,
    expect_failure: str | None = None,
) -> schemathesis.Response:
    """One explicit case of an operation, validated like a generated one.

    ``expect_failure``: the code of the one check failure a known bug causes; any other
    failure (or none) is reported as it is.
    """
    operation = schema[path][method]
    if headers is None:
        headers = ADMIN if _needs_admin(operation) else BASIC if path.startswith("/v1/") else {}
    case = operation.Case(
        path_parameters=path_parameters,
        query=query,
        headers=headers,
        **({} if body is None else {"body": body, "media_type": "application/json"}),
    )
    try:
        response = case.call_and_validate(
            base_url=base_url, additional_checks=[admin_routes_need_the_token]
        )
    except FailureGroup as exc:
        if expect_failure is not None:
            assert [f.code for f in exc.exceptions] == [expect_failure], exc
        raise
    assert response.status_code == status, (method, path, response.status_code, response.text)
    return response


def test_the_served_document_is_the_file(live: Stack) -> None:
    resp = live.get("/openapi.json")
    assert resp.status == 200
    assert resp.json() == json.loads(DOCUMENT.read_text())


def test_documented_answers_of_a_populated_system(live: Stack, base_url: str) -> None:
    def go(method: str, path: str, status: int, **kwargs: Any) -> Any:
        response = call(base_url, method, path, status, **kwargs)
        return response.json() if "json" in response.headers.get("content-type", [""])[0] else None

    def raw_ok(path: str) -> bool:
        return live.request("GET", path, headers=ADMIN).status == 200

    for path in ("/healthz", "/readyz", "/metrics", "/openapi.json"):
        go("GET", path, 200)

    # Ingest: the seed's format and Segment's, with their documented refusals.
    identify = {"type": "IDENTIFY", "userId": "u1", "email": "a@b.c", "traits": {"plan": "pro"}}
    go("POST", "/cdp/ingest", 202, body={"eventId": "e1", "ts": T0, "payload": identify})
    track = {"type": "TRACK", "userId": "u1", "name": "Clicked", "properties": {"n": 1}}
    go("POST", "/cdp/ingest", 202, body={"eventId": "e2", "ts": T0, "payload": track})
    go("POST", "/cdp/ingest", 400, body={"eventId": "e3", "ts": T0, "payload": {"type": "TRACK"}})
    big = {"eventId": "e4", "ts": T0, "payload": {**identify, "traits": {"x": "y" * 40_000}}}
    go("POST", "/cdp/ingest", 413, body=big)
    at = "2025-10-04T10:00:01Z"
    call_u2 = {"userId": "u2", "traits": {"age": 40}, "messageId": "m-1", "timestamp": at}
    go("POST", "/v1/identify", 200, body=call_u2)
    go("POST", "/v1/t", 400, body={"userId": "u2"})
    go("POST", "/v1/i", 401, body=call_u2, headers={})
    # Only the preflight answers any other /v1 path: POST there is a 405, in Segment's shape.
    unknown = live.request("POST", "/v1/nope", json.dumps(call_u2).encode(), BASIC)
    assert (unknown.status, unknown.json()["code"]) == (405, "method_not_allowed")
    good = {"type": "track", "userId": "u3", "event": "Clicked", "messageId": "m-2"}
    bad = {"type": "track", "event": "Clicked", "messageId": "m-3"}
    answer = go("POST", "/v1/batch", 200, body={"batch": [good, bad], "sentAt": at})
    assert [r["index"] for r in answer["rejected"]] == [1]
    assert answer["rejected"][0]["messageId"] == "m-3"
    go("POST", "/v1/b", 200, body={"batch": [{**good, "messageId": "m-4"}]})
    go("POST", "/v1/import", 200, body={"batch": [{**good, "messageId": "m-5", "timestamp": at}]})
    none_valid = go("POST", "/v1/batch", 200, body={"batch": [bad]})  # Segment answers 200
    assert [r["index"] for r in none_valid["rejected"]] == [0]
    go("POST", "/v1/batch", 400, body={"batch": []})
    go("POST", "/v1/batch", 400, body={"batch": [good, 5]})
    go("GET", "/v1/projects/{write_key}/settings", 200, path_parameters={"write_key": WRITE_KEY})
    go("GET", "/v1/projects/{write_key}/settings", 404, path_parameters={"write_key": "nope"})
    go("OPTIONS", "/v1/{tail}", 204, path_parameters={"tail": "batch"})

    # Segments: built-ins are read-only; a custom one is created, replaced, deleted.
    seniors = {"rule": {"trait": "age", "op": "gte", "value": 30}, "description": "30+"}
    name = {"name": "seniors"}
    go("PUT", "/cdp/segments/{name}", 201, path_parameters=name, body=seniors)
    go("PUT", "/cdp/segments/{name}", 200, path_parameters=name, body=seniors)
    go("PUT", "/cdp/segments/{name}", 400, path_parameters=name, body={"rule": {"inactive": "7q"}})
    go("PUT", "/cdp/segments/{name}", 409, path_parameters={"name": "pro_plan"}, body=seniors)
    go("DELETE", "/cdp/segments/{name}", 409, path_parameters={"name": "pro_plan"})
    go("GET", "/cdp/segments/{name}", 404, path_parameters={"name": "nothing"})
    go("GET", "/cdp/segments/{name}/members", 400, path_parameters=name, query={"limit": 0})
    go("GET", "/cdp/segments", 200)

    # Apply everything: profiles, counters, memberships.
    live.set_clock("2025-10-04T10:00:10Z")
    wait_until(lambda: raw_ok("/cdp/profiles/user:u1"), message="profile user:u1")
    wait_until(lambda: raw_ok("/cdp/profiles/user:u2"), message="profile user:u2")
    wait_until(
        lambda: live.request("GET", "/cdp/segments/pro_plan", headers=ADMIN).json()["members"],
        message="user:u1 in pro_plan",
    )
    profile = go("GET", "/cdp/profiles/{id}", 200, path_parameters={"id": "user:u1"})
    assert profile["traits"]["plan"]["v"] == "pro" and profile["counters"]
    for part in ("traits", "identifiers", "segments"):
        go("GET", f"/cdp/profiles/{{id}}/{part}", 200, path_parameters={"id": "email:a@b.c"})
        go("GET", f"/cdp/profiles/{{id}}/{part}", 400, path_parameters={"id": "phone:1"})
        go("GET", f"/cdp/profiles/{{id}}/{part}", 404, path_parameters={"id": "user:nobody"})
    go("GET", "/cdp/profiles/{id}", 200, path_parameters={"id": profile["canonicalId"]})
    page = go("GET", "/cdp/profiles", 200, query={"limit": 1})
    assert page["cursor"] is not None
    go("GET", "/cdp/profiles", 200, query={"cursor": page["cursor"], "limit": 1000})
    go("GET", "/cdp/profiles", 400, query={"cursor": "x"})
    export = call(base_url, "GET", "/cdp/profiles:export", 200)
    assert len(export.text.splitlines()) >= 2
    for segment in ("pro_plan", "seniors"):
        go("GET", "/cdp/segments/{name}", 200, path_parameters={"name": segment})
        go("GET", "/cdp/segments/{name}/members", 200, path_parameters={"name": segment})
    go("GET", "/cdp/segments", 200)
    go("DELETE", "/cdp/segments/{name}", 204, path_parameters=name)
    go("DELETE", "/cdp/segments/{name}", 404, path_parameters=name)

    # Webhooks.
    hook = go("POST", "/cdp/webhooks", 201, body={"url": "http://127.0.0.1:9/hook"})
    go("POST", "/cdp/webhooks", 400, body={"url": "not a url"})
    go("GET", "/cdp/webhooks", 200)
    go("DELETE", "/cdp/webhooks/{id}", 204, path_parameters={"id": hook["id"]})
    go("DELETE", "/cdp/webhooks/{id}", 404, path_parameters={"id": hook["id"]})

    # Erasure: a job, a suppression, and lifting it.
    job = go("DELETE", "/cdp/profiles/{id}", 202, path_parameters={"id": "user:u2"})
    go("DELETE", "/cdp/profiles/{id}", 404, path_parameters={"id": "user:u2"})
    wait_until(
        lambda: (
            live.request("GET", f"/cdp/jobs/{job['id']}", headers=ADMIN).json()["state"] == "done"
        ),
        message="the erasure job",
    )
    go("GET", "/cdp/jobs/{id}", 200, path_parameters={"id": job["id"]})
    go("GET", "/cdp/jobs/{id}", 404, path_parameters={"id": "nope"})
    assert "user:u2" in go("GET", "/cdp/suppressions", 200)["suppressed"]
    go("DELETE", "/cdp/suppressions/{id}", 204, path_parameters={"id": "user:u2"})
    go("DELETE", "/cdp/suppressions/{id}", 404, path_parameters={"id": "user:u2"})


def test_the_event_stream_opens_and_refuses_as_documented(base_url: str) -> None:
    """The stream is left out of the generated cases (it never ends); checked by hand."""
    call(base_url, "GET", STREAM, 401, headers={}, schema=strict)
    call(base_url, "GET", STREAM, 401, headers={"Authorization": "Bearer wrong"}, schema=strict)
    documented = strict[STREAM]["GET"].definition.raw["responses"]["200"]["content"]
    opening = urllib.request.Request(f"{base_url}{STREAM}?from=0-0", headers=ADMIN)
    with urllib.request.urlopen(opening, timeout=10) as resp:
        assert resp.status == 200
        assert resp.headers.get_content_type() in documented
        assert resp.readline() == b": connected\n"


@pytest.mark.timeout(900)
@authed.parametrize()
@HYPOTHESIS
def test_generated_cases_conform(case: schemathesis.Case, base_url: str) -> None:
    CASES[f"authenticated {_phase(case)}"] += 1
    OPERATIONS_SEEN["authenticated"].add(case.operation.label)
    case.call_and_validate(base_url=base_url, additional_checks=[admin_routes_need_the_token])


@pytest.mark.timeout(900)
@anonymous.parametrize()
@HYPOTHESIS
def test_unauthenticated_cases_are_refused(case: schemathesis.Case, base_url: str) -> None:
    CASES[f"anonymous {_phase(case)}"] += 1
    OPERATIONS_SEEN["anonymous"].add(case.operation.label)
    response = case.call_and_validate(
        base_url=base_url, additional_checks=[admin_routes_need_the_token]
    )
    if _needs_admin(case.operation):
        assert response.status_code == 401, response.text
    elif case.method == "POST" and case.operation.path.startswith("/v1/"):
        body_key = case.body.get("writeKey") if isinstance(case.body, dict) else None
        if body_key != WRITE_KEY:
            assert response.status_code in (400, 401, 404, 413), response.text


# Findings of earlier runs, each reproduced exactly.


def test_a_rejected_call_echoes_only_a_string_message_id(base_url: str) -> None:
    """The document: ``Rejected.messageId`` is a string or null."""
    batch = {"batch": [{"type": "track", "userId": "u9", "messageId": {}}]}
    answer = call(
        base_url,
        "POST",
        "/v1/batch",
        200,
        body=batch,
        schema=strict,
        expect_failure=SCHEMA_VIOLATION,
    ).json()
    assert answer["rejected"][0]["messageId"] is None


def test_a_preflight_is_answered_for_any_path(base_url: str) -> None:
    """The document: ``OPTIONS /v1/{tail}``, any string, answers 204."""
    call(
        base_url,
        "OPTIONS",
        "/v1/{tail}",
        204,
        path_parameters={"tail": "a\nb"},
        schema=strict,
        expect_failure=UNDOCUMENTED_STATUS,
    )


@pytest.mark.parametrize(
    "where", [{"query": {"from": "bad"}}, {"headers": {**ADMIN, "Last-Event-ID": "bad"}}]
)
def test_a_bad_stream_start_is_a_documented_400(base_url: str, where: dict[str, Any]) -> None:
    """The server answers 400 for a start that is not a stream id; the document lists
    only 200, 401 and 503 for the stream."""
    call(base_url, "GET", STREAM, 400, schema=strict, expect_failure=UNDOCUMENTED_STATUS, **where)


# The disagreements a run with every check found (issue 8, defect 16): each request,
# and whether the document allows it, against what the server answers.

NOBODY = object()


def document_allows(
    path: str,
    method: str,
    *,
    path_parameters: dict[str, Any] | None = None,
    query: dict[str, Any] | None = None,
    headers: dict[str, Any] | None = None,
    body: Any = NOBODY,
    media_type: str = "application/json",
) -> bool:
    """Whether every part of this request is valid for the document (as schemathesis reads it)."""
    operation = strict[path][method]
    given = [
        (operation.path_parameters, path_parameters or {}),
        (operation.query, query or {}),
        (operation.headers, headers or {}),
    ]
    for parameters, values in given:
        for parameter in parameters:
            if parameter.name in values and not parameter.is_valid(values[parameter.name]):
                return False
    if body is not NOBODY:
        (media,) = [b for b in operation.body if b.media_type == media_type]
        return bool(media.is_valid(body))
    return True


ALIAS_WITHOUT_ANONYMOUS_ID = {
    "eventId": "e-alias",
    "ts": T0,
    "payload": {"type": "ALIAS", "userId": "u123", "email": "a@b.c"},
}
TRACK_BODY = {"type": "track", "userId": "u123", "event": "Feature Used", "messageId": "m-a"}


WEBHOOK_SECRET_OBJECT = {"url": "https://0.com", "secret": {}}
# (method, target, body, headers; the operation, and the parts as the document sees them)
FINDINGS = {
    "alias-without-anonymousId": (
        ("POST", "/cdp/ingest", ALIAS_WITHOUT_ANONYMOUS_ID, {}),
        ("/cdp/ingest", {"body": ALIAS_WITHOUT_ANONYMOUS_ID}),
    ),
    "non-numeric-cursor": (
        ("GET", "/cdp/profiles?cursor=%C3%BE1", None, ADMIN),
        ("/cdp/profiles", {"query": {"cursor": "þ1"}}),
    ),
    "free-form-profile-id": (
        ("GET", "/cdp/profiles/7e977b41747101bb", None, ADMIN),
        ("/cdp/profiles/{id}", {"path_parameters": {"id": "7e977b41747101bb"}}),
    ),
    "last-event-id-1e100": (
        ("GET", STREAM, None, {**ADMIN, "Last-Event-ID": "1e100"}),
        (STREAM, {"headers": {"Last-Event-ID": "1e100"}}),
    ),
    "empty-text-plain-batch": (
        ("POST", "/v1/batch", b"", {**BASIC, "Content-Type": "text/plain"}),
        ("/v1/batch", {"body": "", "media_type": "text/plain"}),
    ),
    "v1-a-with-a-track-body": (
        ("POST", "/v1/a", TRACK_BODY, BASIC),
        ("/v1/a", {"body": TRACK_BODY}),
    ),
    "webhook-secret-object": (
        ("POST", "/cdp/webhooks", WEBHOOK_SECRET_OBJECT, ADMIN),
        ("/cdp/webhooks", {"body": WEBHOOK_SECRET_OBJECT}),
    ),
}


@pytest.mark.parametrize("finding", list(FINDINGS))
def test_the_document_and_the_server_agree_on_what_was_found(live: Stack, finding: str) -> None:
    """Each was allowed by one and refused by the other: now both refuse it."""
    (method, target, body, headers), (operation, parts) = FINDINGS[finding]
    raw = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    sent = {"Content-Type": "application/json", **headers} if raw is not None else headers
    answer = live.request(method, target, raw, sent)
    assert answer.status == 400, (answer.status, answer.body)
    assert not document_allows(operation, method, **parts), "the document allows it"


def test_valid_counterparts_are_allowed_by_both(live: Stack) -> None:
    """The other side of the findings: the valid forms pass both, so the document did
    not merely get stricter."""
    assert document_allows("/cdp/profiles", "GET", query={"cursor": "12"})
    assert live.request("GET", "/cdp/profiles?cursor=12", headers=ADMIN).status == 200
    alias = {"type": "alias", "previousId": "anon-1", "userId": "u123", "messageId": "m-b"}
    assert document_allows("/v1/a", "POST", body=alias)
    assert live.request("POST", "/v1/a", json.dumps(alias).encode(), BASIC).status == 200
    hook = {"url": "https://0.com", "secret": "s" * 16}
    assert document_allows("/cdp/webhooks", "POST", body=hook)
    created = live.request("POST", "/cdp/webhooks", json.dumps(hook).encode(), ADMIN)
    assert created.status == 201, created.body


def test_the_generated_run_was_as_large_as_asked(capsys: pytest.CaptureFixture[str]) -> None:
    """The number of generated cases, on the terminal; a whole run must reach its minimum
    (15,000 for the long one). A partial run (``-k``) only reports."""
    total = sum(CASES.values())
    if not total:
        pytest.skip("the generated tests did not run in this session")
    by_phase = ", ".join(f"{n} {kind}" for kind, n in sorted(CASES.items()))
    line = f"schemathesis: {total} generated cases ({by_phase}); seed {SEED}, {EXAMPLES} examples"
    with capsys.disabled():
        print(f"\n{line}")
    whole = all(
        OPERATIONS_SEEN[who] >= {op.label for op in _operations(schema)}
        for who, schema in (("authenticated", authed), ("anonymous", anonymous))
    )
    if whole:
        assert total >= MIN_CASES, line

"""The admin API against the real API process (and a worker where segments must be
evaluated): every admin route refuses anyone without the admin token, definitions
are validated before they are stored (400 naming the offending node), built-ins are
read-only, and a new or changed definition is backfilled over the existing profiles
with exactly one ENTER or EXIT per profile that changes."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from cdp import keys
from cdp.api.app import create_app
from cdp.settings import load_settings
from tests.support.stack import Response, Stack
from tests.support.values import ADMIN_TOKEN as TOKEN
from tests.support.values import T0, ms
from tests.support.wait import wait_until

pytestmark = pytest.mark.integration

BUILTINS = {"power_user", "pro_plan", "reengage"}

# Routes anyone may call; every other route of the app is an admin route. A new route
# is therefore an admin route for this test until someone adds it here on purpose.
# /console and its files hold no data: the page asks for the admin token itself.
PUBLIC_PATHS = {"/cdp/ingest", "/healthz", "/readyz", "/metrics", "/openapi.json", "/console"}
PUBLIC_PREFIXES = (
    "/v1/",  # Segment-compatible ingest, HTTP Basic with a write key
    "/console/",
)

KNOWN_ADMIN_ROUTES = {
    ("GET", "/cdp/segments"),
    ("GET", "/cdp/segments/{name}"),
    ("PUT", "/cdp/segments/{name}"),
    ("DELETE", "/cdp/segments/{name}"),
    ("GET", "/cdp/segments/{name}/members"),
    ("POST", "/cdp/webhooks"),
    ("GET", "/cdp/webhooks"),
    ("DELETE", "/cdp/webhooks/{id}"),
    ("GET", "/cdp/segment-events/stream"),
}

SENIORS = {"rule": {"trait": "age", "op": "gte", "value": 30}, "description": "30 and over"}


def admin_routes() -> list[tuple[str, str]]:
    """(method, path template) of every admin route the app registers (HEAD aside)."""
    app = create_app(load_settings(env={}))
    routes = set()
    for route in app.router.routes():
        path = route.resource.canonical if route.resource is not None else ""
        if route.method in ("HEAD", "*") or path in PUBLIC_PATHS:
            continue
        if path.startswith(PUBLIC_PREFIXES):
            continue
        routes.add((route.method, path))
    return sorted(routes)


def request(
    stack: Stack,
    method: str,
    path: str,
    payload: Any = None,
    token: str | None = TOKEN,
    headers: dict[str, str] | None = None,
) -> Response:
    body = None
    if payload is not None:
        body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    sent = {"Content-Type": "application/json"}
    if token is not None:
        sent["Authorization"] = f"Bearer {token}"
    sent.update(headers or {})
    return stack.request(method, path, body, sent)


def assert_error(resp: Response, status: int, *fragments: str) -> str:
    assert resp.status == status, (resp.status, resp.body)
    assert resp.headers.get("Content-Type", "").startswith("application/json")
    body = resp.json()
    assert body["status"] == "error"
    for fragment in fragments:
        assert fragment in body["message"], (fragment, body["message"])
    return str(body["message"])


def concrete(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "x", path)


def body_for(method: str, path: str) -> Any:
    """A body that would be valid, so that only the missing credentials can fail."""
    if method == "PUT":
        return SENIORS
    if method == "POST" and path == "/cdp/webhooks":
        return {"url": "http://127.0.0.1:9/hook", "secret": "s" * 32}
    return None


# -- authentication ------------------------------------------------------------------


def test_the_route_filter_finds_every_known_admin_route() -> None:
    assert KNOWN_ADMIN_ROUTES <= set(admin_routes())


def test_every_admin_route_needs_the_bearer_token(stack: Stack) -> None:
    stack.start_api(admin_token=TOKEN)
    attempts = {
        "no credentials": {},
        "wrong token": {"Authorization": "Bearer not-the-token"},
        "token with a suffix": {"Authorization": f"Bearer {TOKEN}x"},
        "empty bearer": {"Authorization": "Bearer "},
        "basic scheme": {"Authorization": f"Basic {TOKEN}"},
        "no scheme": {"Authorization": TOKEN},
        "token in another header": {"X-Admin-Token": TOKEN},
    }
    for method, template in admin_routes():
        path = concrete(template)
        for label, headers in attempts.items():
            resp = request(stack, method, path, body_for(method, template), None, headers)
            assert resp.status == 401, (method, path, label, resp.status, resp.body)
            assert_error(resp, 401, "admin token")
    # Nothing was stored or changed by any refused call.
    assert stack.r.hgetall(keys.SEGMENTS) == {}
    assert stack.r.hgetall(keys.WEBHOOKS) == {}
    assert stack.r.get(keys.SEGMENTS_VERSION) is None
    # The same calls with the token are not refused (the stream would never end).
    assert request(stack, "GET", "/cdp/segments").status == 200
    assert request(stack, "GET", "/cdp/webhooks").status == 200


def test_a_non_ascii_token_is_a_401_not_a_500(stack: Stack) -> None:
    stack.start_api(admin_token=TOKEN)
    resp = request(stack, "GET", "/cdp/segments", token="t\u00e9st")
    assert_error(resp, 401, "admin token")


def test_without_a_server_token_every_admin_route_answers_401(stack: Stack) -> None:
    stack.start_api()  # no CDP_ADMIN_TOKEN
    for method, template in admin_routes():
        path = concrete(template)
        for token in (None, TOKEN, "", "undefined"):
            resp = request(stack, method, path, body_for(method, template), token)
            assert resp.status == 401, (method, path, token, resp.status, resp.body)
            assert_error(resp, 401, "CDP_ADMIN_TOKEN")
    assert stack.r.hgetall(keys.SEGMENTS) == {}
    assert stack.r.hgetall(keys.WEBHOOKS) == {}


# -- definitions -----------------------------------------------------------------------


def rule(r: Any) -> dict[str, Any]:
    return {"rule": r}


INVALID = [
    (
        "unknown kind deep inside all/any/not",
        "deep",
        rule(
            {
                "all": [
                    {"trait": "plan", "op": "eq", "value": "pro"},
                    {"any": [{"inactive": "1h"}, {"not": {"bogus": {"x": 1}}}]},
                ]
            }
        ),
        ["$.rule.all[1].any[1].not:", "'bogus'"],
    ),
    (
        "bad duration",
        "dur",
        rule({"any": [{"count": {"within": "7q", "gte": 1}}]}),
        ["$.rule.any[0].count.within:", "'7q' is not a duration"],
    ),
    (
        "zero duration",
        "dur0",
        rule({"returned": {"after": "0s", "within": "1h"}}),
        ["$.rule.returned.after:"],
    ),
    (
        "duration not a string",
        "dur_int",
        rule({"not": {"inactive": 600}}),
        ["$.rule.not.inactive:"],
    ),
    (
        "gte a string",
        "gte_str",
        rule({"count": {"within": "1h", "gte": "5"}}),
        ["$.rule.count.gte:", "int"],
    ),
    (
        "gte a float",
        "gte_float",
        rule({"all": [{"count": {"within": "1h", "gte": 2.5}}]}),
        ["$.rule.all[0].count.gte:", "int"],
    ),
    (
        "gte a boolean",
        "gte_bool",
        rule({"count": {"within": "1h", "gte": True}}),
        ["$.rule.count.gte:"],
    ),
    (
        "gte zero",
        "gte_zero",
        rule({"count": {"within": "1h", "gte": 0}}),
        ["$.rule.count.gte:"],
    ),
    (
        "count without gte",
        "no_gte",
        rule({"any": [{"count": {"within": "1h"}}]}),
        ["$.rule.any[0].count:", "gte"],
    ),
    (
        "op in without a list",
        "in",
        rule({"not": {"any": [{"trait": "plan", "op": "in", "value": "pro"}]}}),
        ["$.rule.not.any[0].value:", "list"],
    ),
    (
        "unknown op",
        "op",
        rule({"all": [{"inactive": "1h"}, {"trait": "plan", "op": "like", "value": "p%"}]}),
        ["$.rule.all[1].op:", "'like'"],
    ),
    (
        "ordering op on a non-orderable value",
        "gt",
        rule({"all": [{"trait": "age", "op": "gt", "value": "thirty"}]}),
        ["$.rule.all[0].value:"],
    ),
    (
        "op without its value",
        "novalue",
        rule({"trait": "plan", "op": "eq"}),
        ["$.rule.value:"],
    ),
    ("empty all", "empty_all", rule({"all": []}), ["$.rule.all:", "non-empty"]),
    (
        "empty any deep",
        "empty_any",
        rule({"not": {"any": []}}),
        ["$.rule.not.any:", "non-empty"],
    ),
    ("empty rule", "empty_rule", rule({}), ["$.rule:"]),
    (
        "two kinds in one node",
        "two",
        rule({"inactive": "1h", "not": {"inactive": "2h"}}),
        ["$.rule:", "exactly one"],
    ),
    (
        "extra field in a trait node",
        "extra_trait",
        rule({"any": [{"trait": "plan", "op": "eq", "value": "pro", "colour": "red"}]}),
        ["$.rule.any[0]:", "colour"],
    ),
    (
        "extra field in a count node",
        "extra_count",
        rule({"count": {"within": "1h", "gte": 1, "every": "day"}}),
        ["$.rule.count:", "every"],
    ),
    (
        "extra field in the definition",
        "extra_top",
        {"rule": {"inactive": "1h"}, "owner": "me"},
        ["$:", "owner"],
    ),
    ("no rule", "norule", {"description": "nothing"}, ["$:"]),
    ("body a list", "list", [{"inactive": "1h"}], ["$:"]),
    ("empty body", "emptybody", b"", ["$:"]),
    (
        "description not a string",
        "desc",
        {"rule": {"inactive": "1h"}, "description": 5},
        ["$.description:"],
    ),
    ("body not JSON", "notjson", b'{"rule": {"inactive": "1h"', ["not valid JSON"]),
    ("bad name", "bad%20name!", SENIORS, ["name 'bad name!'"]),
    ("name too long", "n" * 65, SENIORS, ["name 'nnn"]),
    ("name with a colon", "a:b", SENIORS, ["name 'a:b'"]),
]


def test_invalid_definitions_answer_400_naming_the_offending_node(stack: Stack) -> None:
    stack.start_api(admin_token=TOKEN)
    failures = []
    for label, name, body, fragments in INVALID:
        resp = request(stack, "PUT", f"/cdp/segments/{name}", body)
        try:
            message = assert_error(resp, 400, *fragments)
            assert message.startswith("invalid segment definition: ") or "JSON" in message
        except AssertionError as exc:
            failures.append(f"{label}: {exc}")
    assert not failures, "\n".join(failures)
    # Nothing invalid was stored, and no worker was asked to reload anything.
    assert stack.r.hgetall(keys.SEGMENTS) == {}
    assert stack.r.get(keys.SEGMENTS_VERSION) is None
    assert stack.r.smembers(keys.BACKFILLS) == set()


def test_builtins_are_read_only_and_unknown_segments_are_404(stack: Stack) -> None:
    stack.start_api(admin_token=TOKEN)
    for name in sorted(BUILTINS):
        assert_error(request(stack, "PUT", f"/cdp/segments/{name}", SENIORS), 409, name)
        assert_error(request(stack, "DELETE", f"/cdp/segments/{name}"), 409, name)
        resp = request(stack, "GET", f"/cdp/segments/{name}")
        assert resp.status == 200
        assert resp.json()["builtin"] is True
        assert resp.json()["members"] == 0
    # A built-in is not replaceable even by an invalid body (409 before 400).
    assert_error(request(stack, "PUT", "/cdp/segments/power_user", b"nope"), 409)
    assert request(stack, "GET", "/cdp/segments/power_user").json()["rule"] == {
        "count": {"within": "1d", "gte": 5}
    }
    assert stack.r.hgetall(keys.SEGMENTS) == {}

    for method, path in [
        ("GET", "/cdp/segments/nope"),
        ("DELETE", "/cdp/segments/nope"),
        ("GET", "/cdp/segments/nope/members"),
        ("DELETE", "/cdp/webhooks/nope"),
    ]:
        assert_error(request(stack, method, path), 404, "nope")


def test_put_creates_then_replaces_and_the_list_shows_both_kinds(stack: Stack) -> None:
    stack.start_api(admin_token=TOKEN)
    first = request(stack, "PUT", "/cdp/segments/seniors", SENIORS)
    assert first.status == 201, first.body
    created = first.json()
    assert created["name"] == "seniors"
    assert created["rule"] == SENIORS["rule"]
    assert created["description"] == "30 and over"
    assert created["builtin"] is False
    assert created["backfill"]["state"] in ("running", "done")

    changed = {"rule": {"trait": "age", "op": "gte", "value": 40}}
    second = request(stack, "PUT", "/cdp/segments/seniors", changed)
    assert second.status == 200, second.body
    assert second.json()["rule"] == changed["rule"]
    assert second.json()["description"] == ""
    got = request(stack, "GET", "/cdp/segments/seniors").json()
    assert got["rule"] == changed["rule"]
    assert int(stack.r.get(keys.SEGMENTS_VERSION)) == 2

    listed = request(stack, "GET", "/cdp/segments").json()["segments"]
    by_name = {s["name"]: s for s in listed}
    assert set(by_name) == BUILTINS | {"seniors"}
    assert all(by_name[n]["builtin"] for n in BUILTINS)
    assert not by_name["seniors"]["builtin"]
    assert all(s["members"] == 0 for s in listed)

    for query in ("limit=0", "limit=1001", "limit=ten", "cursor=-1", "cursor=x"):
        resp = request(stack, "GET", f"/cdp/segments/seniors/members?{query}")
        assert_error(resp, 400, query.split("=")[0])


# -- backfills -------------------------------------------------------------------------

AGES = {"u0": 20, "u1": 25, "u2": 30, "u3": 35, "u4": 40, "u5": 45}


@pytest.fixture
def profiles(stack: Stack) -> dict[str, str]:
    """Six profiles with an age trait, applied and evaluated: user id -> canonical id."""
    stack.set_clock(T0)
    stack.start_api(admin_token=TOKEN)
    stack.start_worker("w1")
    for user, age in AGES.items():
        stack.send(f"id-{user}", T0, type="IDENTIFY", userId=user, traits={"age": age})
    stack.set_clock(ms(T0) + 6_000)
    stack.wait_metric("processed", len(AGES))
    stack.wait_idle()
    cids = {u: stack.r.get(keys.identifier(f"user:{u}")) for u in AGES}
    assert all(cids.values())
    assert stack.r.zcard(keys.PROFILES) == len(AGES)
    return cids  # type: ignore[return-value]


def transitions(stack: Stack, name: str) -> list[str]:
    """Canonical ids of the "<name>" events in cdp:segment-events, in stream order."""
    out = []
    for _, fields in stack.r.xrange(keys.SEGMENT_EVENTS):
        event = json.loads(fields["e"])
        if event["payload"]["name"] == name:
            out.append(event["payload"]["properties"]["canonicalId"])
    return out


def wait_backfill_done(stack: Stack, name: str) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        info = request(stack, "GET", f"/cdp/segments/{name}").json()
        backfill = info.get("backfill") or {}
        return info if backfill.get("state") == "done" else None

    return wait_until(done, timeout=20, message=f"the backfill of {name}")  # type: ignore[no-any-return]


def members(stack: Stack, name: str, limit: int) -> tuple[set[str], list[list[str]]]:
    """Every member, following the cursor until it is null; also the pages."""
    seen: set[str] = set()
    pages: list[list[str]] = []
    cursor: str | None = "0"
    while cursor is not None:
        resp = request(stack, "GET", f"/cdp/segments/{name}/members?limit={limit}&cursor={cursor}")
        assert resp.status == 200, resp.body
        page = resp.json()
        assert page["segment"] == name
        pages.append(page["members"])
        seen.update(page["members"])
        cursor = page["cursor"]
        assert len(pages) < 1000, "the cursor never comes back to null"
    return seen, pages


def test_backfill_enters_and_exits_existing_profiles_exactly_once(
    stack: Stack, profiles: dict[str, str]
) -> None:
    assert stack.r.xlen(keys.SEGMENT_EVENTS) == 0  # no built-in matches these profiles
    resp = request(stack, "PUT", "/cdp/segments/seniors", SENIORS)
    assert resp.status == 201, resp.body
    info = wait_backfill_done(stack, "seniors")
    assert info["backfill"]["scanned"] == len(AGES)
    assert info["backfill"]["total"] == len(AGES)

    older = {profiles[u] for u, age in AGES.items() if age >= 30}
    entered = transitions(stack, "seniors ENTER")
    assert sorted(entered) == sorted(older)  # each once
    assert info["members"] == len(older)
    for limit in (1, 2):
        assert members(stack, "seniors", limit)[0] == older

    listed = {s["name"]: s for s in request(stack, "GET", "/cdp/segments").json()["segments"]}
    assert set(listed) == BUILTINS | {"seniors"}
    assert listed["seniors"]["members"] == len(older)
    assert listed["seniors"]["rule"] == SENIORS["rule"]
    assert listed["seniors"]["builtin"] is False
    assert all(listed[b]["members"] == 0 and listed[b]["builtin"] for b in BUILTINS)

    # A narrower definition: those under 40 EXIT once, the others stay without events.
    narrower = {"rule": {"trait": "age", "op": "gte", "value": 40}}
    resp = request(stack, "PUT", "/cdp/segments/seniors", narrower)
    assert resp.status == 200, resp.body
    info = wait_backfill_done(stack, "seniors")
    assert info["backfill"]["scanned"] == len(AGES)
    oldest = {profiles[u] for u, age in AGES.items() if age >= 40}
    assert sorted(transitions(stack, "seniors EXIT")) == sorted(older - oldest)
    assert sorted(transitions(stack, "seniors ENTER")) == sorted(older)  # no re-ENTER
    assert members(stack, "seniors", 1)[0] == oldest
    assert info["members"] == len(oldest)

    # Widened again on the other side: the youngest ENTER, nobody else moves. (Every
    # profile has now changed membership in some backfill, so none can be skipped.)
    both_ends = {
        "rule": {
            "any": [
                {"trait": "age", "op": "lt", "value": 30},
                {"trait": "age", "op": "gte", "value": 40},
            ]
        }
    }
    assert request(stack, "PUT", "/cdp/segments/seniors", both_ends).status == 200
    info = wait_backfill_done(stack, "seniors")
    assert info["backfill"]["scanned"] == len(AGES)
    younger = {profiles[u] for u, age in AGES.items() if age < 30}
    assert sorted(transitions(stack, "seniors ENTER")) == sorted(older | younger)
    assert sorted(transitions(stack, "seniors EXIT")) == sorted(older - oldest)
    assert members(stack, "seniors", 2)[0] == younger | oldest

    assert request(stack, "DELETE", "/cdp/segments/seniors").status == 204
    remaining = request(stack, "GET", "/cdp/segments").json()["segments"]
    assert {s["name"] for s in remaining} == BUILTINS
    assert_error(request(stack, "GET", "/cdp/segments/seniors"), 404)
    assert_error(request(stack, "GET", "/cdp/segments/seniors/members"), 404)
    assert_error(request(stack, "DELETE", "/cdp/segments/seniors"), 404)
    assert not stack.r.exists(keys.segment_members("seniors"))


def test_a_segment_deleted_and_defined_again_lists_its_members(
    stack: Stack, profiles: dict[str, str]
) -> None:
    older = {profiles[u] for u, age in AGES.items() if age >= 30}
    assert request(stack, "PUT", "/cdp/segments/seniors", SENIORS).status == 201
    wait_backfill_done(stack, "seniors")
    assert members(stack, "seniors", 100)[0] == older
    assert request(stack, "DELETE", "/cdp/segments/seniors").status == 204
    assert request(stack, "PUT", "/cdp/segments/seniors", SENIORS).status == 201
    info = wait_backfill_done(stack, "seniors")
    assert members(stack, "seniors", 100)[0] == older
    assert info["members"] == len(older)


def test_a_members_page_holds_at_most_limit_members(stack: Stack) -> None:
    # Enough members that the set is a hash table on every Redis version (a small set
    # is one listpack that SSCAN returns whole, whatever COUNT says).
    n = 150
    stack.set_clock(T0)
    stack.start_api(admin_token=TOKEN)
    stack.start_worker("w1")
    for i in range(n):
        stack.send(f"id-{i}", T0, type="IDENTIFY", userId=f"m{i}", traits={"age": 50})
    stack.set_clock(ms(T0) + 6_000)
    stack.wait_metric("processed", n)
    assert request(stack, "PUT", "/cdp/segments/seniors", SENIORS).status == 201
    info = wait_backfill_done(stack, "seniors")
    assert info["members"] == n
    everyone = set(stack.r.zrange(keys.PROFILES, 0, -1))
    for limit in (1, 7):
        seen, pages = members(stack, "seniors", limit)
        assert seen == everyone
        assert max(len(p) for p in pages) <= limit, [len(p) for p in pages]

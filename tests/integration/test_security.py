"""Who may call what: admin routes need the admin token and nothing else opens them
(write keys in any form included), write keys only ingest, and the admin token is
not a write key. The admin routes are read from the app's router, so a route added
later is covered without touching this file."""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterator
from typing import Any

import pytest
import redis as redis_sync

from cdp.api.app import create_app
from cdp.api.tracking_spec import SHORT, TYPES
from cdp.embedded import RedisServer
from cdp.settings import load_settings
from tests.support.stack import Response, Stack
from tests.support.values import ADMIN_TOKEN as TOKEN
from tests.support.values import T0, WRITE_KEY, iso, ms
from tests.support.wait import wait_until

pytestmark = pytest.mark.integration

USER, EMAIL = "sec-user", "secret.person@example.com"


def routes() -> list[tuple[str, str]]:
    app = create_app(load_settings(env={}))
    found = set()
    for route in app.router.routes():
        if route.resource is not None:
            found.add((route.method, route.resource.canonical))
    return sorted(found)


def admin_routes() -> list[tuple[str, str]]:
    """Every route under /cdp/ but the seed's ingest route, whatever its method."""
    return [
        (method, path)
        for method, path in routes()
        if path.startswith("/cdp/") and path != "/cdp/ingest"
    ]


def tracking_posts() -> list[str]:
    """Every concrete POST path under /v1/ (``{kind}`` expanded to each call type)."""
    out = []
    for method, path in routes():
        if method != "POST" or not path.startswith("/v1/"):
            continue
        if path == "/v1/{kind}":
            out += [f"/v1/{kind}" for kind in [*TYPES, *SHORT]]
        else:
            assert "{" not in path, f"expand the new route {path} here"
            out.append(path)
    return sorted(out)


def concrete(path: str, identifier: str = "x") -> str:
    return re.sub(r"\{[^}]+\}", identifier, path)


def basic(user: str, password: str = "") -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def body_for(method: str, path: str) -> bytes | None:
    """A body that would be accepted, so that only the credentials can fail."""
    if method == "PUT" and path.startswith("/cdp/segments/"):
        payload: Any = {"rule": {"trait": "age", "op": "gte", "value": 30}}
    elif method == "POST" and path == "/cdp/webhooks":
        payload = {"url": "http://127.0.0.1:9/hook", "secret": "s" * 32}
    elif method in ("POST", "PUT", "PATCH"):
        payload = {}
    else:
        return None
    return json.dumps({**payload, "writeKey": WRITE_KEY}).encode()


def call_for(path: str) -> dict[str, Any]:
    """A valid Segment call for the route, carrying the write key in the body too."""
    kind = SHORT.get(path.rsplit("/", 1)[1], path.rsplit("/", 1)[1])
    at = iso(ms(T0))
    calls: dict[str, dict[str, Any]] = {
        "identify": {"userId": USER, "traits": {"email": EMAIL}},
        "track": {"userId": USER, "event": "Probe"},
        "alias": {"previousId": "anon-sec", "userId": USER},
        "page": {"userId": USER, "name": "Home"},
        "screen": {"userId": USER, "name": "Home"},
        "group": {"userId": USER, "groupId": "g1"},
    }
    if kind in calls:
        return {**calls[kind], "timestamp": at, "writeKey": WRITE_KEY}
    return {
        "batch": [{**calls["track"], "type": "track", "timestamp": at}],
        "writeKey": WRITE_KEY,
    }


def send(stack: Stack, method: str, path: str, body: bytes | None, auth: str | None) -> Response:
    headers = {"Content-Type": "application/json"}
    if auth is not None:
        headers["Authorization"] = auth
    return stack.request(method, path, body, headers)


def assert_segment_401(resp: Response, what: str) -> None:
    assert resp.status == 401, (what, resp.status, resp.body)
    body = resp.json()
    assert body["code"] and body["message"], (what, body)


@pytest.fixture(scope="module")
def api_process(
    redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    """One API process with the admin token and a write key, shared by the module."""
    client = redis_sync.Redis.from_url(redis_server.url, decode_responses=True)
    shared = Stack(redis_server.url, client, tmp_path_factory.mktemp("api"))
    shared.start_api(admin_token=TOKEN, write_keys=f"{WRITE_KEY}=web")
    yield shared
    shared.close()
    client.close()


@pytest.fixture
def api(api_process: Stack, redis_url: str) -> Stack:
    """The shared API (no worker), Redis emptied."""
    return api_process


def test_the_route_list_sees_the_admin_and_tracking_routes() -> None:
    found = set(admin_routes())
    assert {
        ("GET", "/cdp/segments"),
        ("POST", "/cdp/webhooks"),
        ("GET", "/cdp/segment-events/stream"),
        ("DELETE", "/cdp/profiles/{id}"),
        ("GET", "/cdp/jobs/{id}"),
        ("GET", "/cdp/suppressions"),
        ("DELETE", "/cdp/suppressions/{id}"),
    } <= found
    assert {"/v1/batch", "/v1/import", "/v1/identify", "/v1/t"} <= set(tracking_posts())


def test_every_admin_route_refuses_anyone_without_the_admin_token(api: Stack) -> None:
    attempts = {
        "no credentials": (None, {401}),
        "write key as Basic user": (basic(WRITE_KEY), {401, 403}),
        "write key as Basic password": (basic("", WRITE_KEY), {401, 403}),
        "write key as Bearer": (f"Bearer {WRITE_KEY}", {401, 403}),
        "admin token as Basic user": (basic(TOKEN), {401, 403}),
    }
    checked = 0
    for method, template in admin_routes():
        path = concrete(template)
        for what, (auth, allowed) in attempts.items():
            resp = send(api, method, path, body_for(method, template), auth)
            assert resp.status in allowed, (method, template, what, resp.status, resp.body)
            checked += 1
        # the write key in the body or the query string opens nothing either
        resp = send(api, method, f"{path}?writeKey={WRITE_KEY}", body_for(method, template), None)
        assert resp.status == 401, (method, template, "writeKey", resp.status, resp.body)
    assert checked >= 5 * 15
    # and nothing was changed by all of that
    assert api.r.hlen("cdp:segments") == 0
    assert api.r.hlen("cdp:webhooks") == 0


def test_a_write_key_cannot_read_or_erase_a_profile(stack: Stack) -> None:
    stack.set_clock(T0)
    stack.start_api(admin_token=TOKEN, write_keys=f"{WRITE_KEY}=web")
    stack.start_worker()
    resp = send(
        stack,
        "POST",
        "/v1/identify",
        json.dumps(call_for("/v1/identify")).encode(),
        basic(WRITE_KEY),
    )
    assert resp.status == 200, resp.body
    stack.set_clock(ms(T0) + 30_000)
    wait_until(lambda: stack.r.get(f"cdp:identifier:{{user:{USER}}}"), message="the profile")
    cid = stack.r.get(f"cdp:identifier:{{user:{USER}}}")

    profile_routes = [(m, p) for m, p in admin_routes() if p.startswith("/cdp/profiles")]
    assert ("DELETE", "/cdp/profiles/{id}") in profile_routes
    for identifier in (f"user:{USER}", f"email:{EMAIL}", str(cid)):
        for method, template in [*profile_routes, ("GET", "/cdp/profiles/{id}")]:
            path = concrete(template, identifier)
            for auth in (basic(WRITE_KEY), f"Bearer {WRITE_KEY}", None):
                resp = send(stack, method, path, None, auth)
                registered = (method, template) in profile_routes
                allowed = {401, 403} if registered else {405}
                assert resp.status in allowed, (method, path, auth, resp.status, resp.body)
                assert EMAIL.encode() not in resp.body and b"sec-user" not in resp.body
    # still there, untouched
    assert stack.r.get(f"cdp:identifier:{{user:{USER}}}") == cid
    assert stack.r.xlen("cdp:audit") == 0


def test_without_write_keys_every_tracking_post_is_401(stack: Stack) -> None:
    stack.start_api(admin_token=TOKEN)  # no CDP_WRITE_KEYS
    for path in tracking_posts():
        body = json.dumps(call_for(path)).encode()
        for auth in (basic(WRITE_KEY), None, f"Bearer {TOKEN}", basic(TOKEN)):
            assert_segment_401(send(stack, "POST", path, body, auth), f"{path} {auth}")
    assert stack.get(f"/v1/projects/{WRITE_KEY}/settings").status == 404
    assert stack.metric("accepted") == 0
    assert not any(stack.r.scan_iter(match="cdp:events:*"))


def test_the_admin_token_is_not_a_write_key(api: Stack) -> None:
    for path in tracking_posts():
        call = {**call_for(path), "writeKey": TOKEN}
        body = json.dumps(call).encode()
        for auth in (basic(TOKEN), f"Bearer {TOKEN}", None):
            assert_segment_401(send(api, "POST", path, body, auth), f"{path} {auth}")
    assert api.get(f"/v1/projects/{TOKEN}/settings").status == 404
    # while the write key itself works
    resp = send(
        api, "POST", "/v1/track", json.dumps(call_for("/v1/track")).encode(), basic(WRITE_KEY)
    )
    assert (resp.status, resp.json()) == (200, {"success": True}), resp.body
    assert api.metric("accepted") == 1


def test_malformed_basic_auth_is_a_401_not_a_500(api: Stack) -> None:
    body = json.dumps({k: v for k, v in call_for("/v1/track").items() if k != "writeKey"})
    for auth in (
        "Basic !!!not-base64!!!",
        "Basic " + base64.b64encode(b"\xff\xfe:").decode(),
        "Basic ",
        "Basic",
        basic(WRITE_KEY + "x"),
        basic(WRITE_KEY.upper()),
    ):
        assert_segment_401(send(api, "POST", "/v1/track", body.encode(), auth), auth)

"""Helpers of the tests of the Segment-compatible tracking routes (``/v1``): Basic auth
with a write key, and a profile document read back with its counter totals.

The profile is read through the admin profile API (``GET /cdp/profiles/{id}``) when
the app registers it, else with ``cdp.profiles.read_profile`` straight from Redis.
"""

from __future__ import annotations

import asyncio
import base64
from typing import Any
from urllib.parse import quote

from redis.asyncio import Redis

from cdp.api.app import create_app
from cdp.errors import ProfileNotFound
from cdp.profiles import read_profile
from cdp.settings import load_settings
from tests.support.stack import Stack
from tests.support.values import ADMIN_TOKEN
from tests.support.wait import wait_until

# The write keys the tracking tests configure (CDP_WRITE_KEYS): two sources.
WRITE_KEYS = "wk1=web,wk2=ios"


def basic(key: str, password: str = "") -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{key}:{password}".encode()).decode()}


def profile_api_registered() -> bool:
    """Whether the app serves ``GET /cdp/profiles/{id}`` (the admin profile API)."""
    app = create_app(load_settings(env={}))
    return any(
        route.method == "GET"
        and route.resource is not None
        and route.resource.canonical == "/cdp/profiles/{id}"
        for route in app.router.routes()
    )


PROFILE_API = profile_api_registered()


async def _read(redis_url: str, identifier: str) -> dict[str, Any] | None:
    redis = Redis.from_url(redis_url)
    try:
        return await read_profile(redis, identifier)
    except ProfileNotFound:
        return None
    finally:
        await redis.aclose()


def read_doc(stack: Stack, identifier: str, token: str = ADMIN_TOKEN) -> dict[str, Any] | None:
    """The profile document of ``identifier``, or None when no profile answers to it."""
    if PROFILE_API:
        resp = stack.request(
            "GET",
            "/cdp/profiles/" + quote(identifier, safe=":@"),
            headers={"Authorization": f"Bearer {token}"},
        )
        if resp.status == 404:
            return None
        assert resp.status == 200, (resp.status, resp.body)
        doc: dict[str, Any] = resp.json()
        return doc
    return asyncio.run(_read(stack.redis_url, identifier))


def total(doc: dict[str, Any] | None, counter: str) -> int:
    if not doc:
        return 0
    return int(doc["counters"].get(counter, {}).get("total", 0))


def wait_doc(stack: Stack, identifier: str, wanted: dict[str, int]) -> dict[str, Any]:
    """Wait until the profile of ``identifier`` has at least these counter totals."""

    def ready() -> dict[str, Any] | None:
        doc = read_doc(stack, identifier)
        if doc and all(total(doc, name) >= n for name, n in wanted.items()):
            return doc
        return None

    doc: dict[str, Any] = wait_until(ready, timeout=20, message=f"profile {identifier} {wanted}")
    return doc


def assert_person(
    doc: dict[str, Any],
    *,
    user: str,
    email: str,
    anon: str,
    event: str,
    pages: int,
    screens: int = 0,
) -> None:
    """What an identify + track + alias + page (+ screen) + group session leaves."""
    assert sorted(doc["identifiers"]) == sorted(
        [f"user:{user}", f"email:{email.strip().lower()}", f"anon:{anon}"]
    ), doc["identifiers"]
    traits = {name: cell["v"] for name, cell in doc["traits"].items()}
    assert traits["plan"] == "pro"
    assert traits["email"] == email
    assert traits["groupId"] == "acme-1"
    assert traits["groupTraits"] == {"name": "Acme Inc", "employees": 42}
    counters = {name: c["total"] for name, c in doc["counters"].items()}
    assert counters[event] == 1
    assert counters["$track"] == 1
    assert counters["$page"] == pages
    if screens:
        assert counters["$screen"] == screens
    else:
        assert "$screen" not in counters

"""Fixtures of the console's browser tests: a real headless Chromium driven by
Playwright for Python, against a real stack (``tests.support.stack``: redis-server,
``cdp api`` and ``cdp worker`` processes).

- ``chromium``: Debian's ``chromium`` (``$CDP_CHROMIUM``, else /usr/bin/chromium),
  launched once per module through Playwright's ``executable_path`` (Playwright's own
  browser downloads are never used). Every test of the module is skipped, saying
  why, when Playwright is not importable or no Chromium binary exists (.ci/run
  installs Debian's ``chromium`` when it runs as root).
- ``console``: the stack (the system clock, a short window, the default
  stream-retention (0), the admin token, two write keys), one API process, one worker.
- ``page``: a fresh browser context (its own sessionStorage) on the console's page;
  ``logged_in``: the same, past the login form.
- ``shoot(page, name)``: a screenshot into ``$CDP_SCREENSHOT_DIR`` (default
  build/screenshots); with ``CDP_README_IMAGES=1`` also docs/img/console-<name>.png,
  the README's pictures.

Waiting is Playwright's ``expect`` (auto-retrying assertions with a deadline) or
``tests.support.wait.wait_until``; never a sleep.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.segment_library import segment_library
from tests.support.stack import ROOT, Stack
from tests.support.tracking import WRITE_KEYS
from tests.support.values import ADMIN_TOKEN

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
# The system clock (the Segment library stamps events with it) and a short window, at
# the default stream-retention (0): the debugger shows what arrives while it is open
# from its tap (cdp:debugger), though the workers trim the streams within seconds.
FAST = {"clock": "system", "window_size": "200ms"}
# Playwright's own deadline for every expect() of these tests (ms).
EXPECT_TIMEOUT_MS = 20_000


def chromium_path() -> str | None:
    path = os.environ.get("CDP_CHROMIUM") or "/usr/bin/chromium"
    found = shutil.which(path)
    return found


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="playwright is not installed (pip install .[test])"
    )
    path = chromium_path()
    if path is None:
        pytest.skip(
            "no Chromium binary: install Debian's chromium (apt-get install chromium) "
            "or set CDP_CHROMIUM"
        )
    sync_api.expect.set_options(timeout=EXPECT_TIMEOUT_MS)
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=path, headless=True, args=CHROMIUM_ARGS
        )
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def console(stack: Stack) -> Stack:
    stack.start_api(write_keys=WRITE_KEYS, admin_token=ADMIN_TOKEN, **FAST)
    # One history sample when the worker starts, the next an hour later: a test that
    # draws rates replaces it with samples of its own (test_console_pages._write_history).
    stack.start_worker(**FAST, metrics_sample_interval="1h")
    return stack


def console_url(stack: Stack) -> str:
    return f"http://127.0.0.1:{stack.api_port}/console"


def screenshot_dir() -> Path:
    directory = Path(os.environ.get("CDP_SCREENSHOT_DIR") or ROOT / "build" / "screenshots")
    directory.mkdir(parents=True, exist_ok=True)
    return directory


@pytest.fixture
def page(chromium: Any, console: Stack, request: pytest.FixtureRequest) -> Iterator[Any]:
    context = chromium.new_context(viewport={"width": 1360, "height": 900})
    context.set_default_timeout(EXPECT_TIMEOUT_MS)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda msg: print(f"[browser {msg.type}] {msg.text}"))
    page.goto(console_url(console))
    yield page
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:  # what the page showed when it failed
        page.screenshot(path=str(screenshot_dir() / f"failed-{request.node.name}.png"))
    context.close()
    assert errors == [], f"uncaught errors in the page: {errors}"


def log_in(page: Any, token: str = ADMIN_TOKEN) -> None:
    from playwright.sync_api import expect

    page.get_by_label("Admin token").fill(token)
    page.get_by_role("button", name="Log in").click()
    expect(page.locator("#nav")).to_be_visible()


@pytest.fixture
def logged_in(page: Any) -> Any:
    log_in(page)
    return page


@pytest.fixture
def shoot() -> Callable[[Any, str], Path]:
    directory = screenshot_dir()
    readme = os.environ.get("CDP_README_IMAGES") == "1"

    def take(page: Any, name: str) -> Path:
        path = directory / f"console-{name}.png"
        page.screenshot(path=str(path), full_page=True)
        if readme:
            (ROOT / "docs" / "img").mkdir(exist_ok=True)
            shutil.copyfile(path, ROOT / "docs" / "img" / f"console-{name}.png")
        return path

    return take


@pytest.fixture
def analytics(console: Stack) -> Iterator[tuple[Any, list[Any]]]:
    """The official Segment library's module-level client aimed at the console's API
    (write key wk1, source ``web``), reset afterwards, with the errors it reported."""
    with segment_library(console.api_port) as client:
        yield client

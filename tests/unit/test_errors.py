"""One error tree: every exception the project defines or raises on purpose descends
from ``CdpError``, and the tree drawn in ``cdp.errors``' docstring is the real one.
Malformed identifiers are ``InvalidIdentifier`` (400, exit 2), never ``ProfileNotFound``."""

from __future__ import annotations

import ast
import builtins
import importlib
import inspect
import re
from pathlib import Path
from types import ModuleType

import pytest
from aiohttp import web

import cdp
import cdp.errors
import workers
from cdp.errors import (
    CdpError,
    EventRejected,
    InvalidIdentifier,
    InvalidSubscription,
    ProfileNotFound,
)
from cdp.profiles import normalise
from cdp.segments.webhooks import parse_subscription

# Raised on purpose yet outside the tree, by (module file, class), with the reason.
# (An exception that the module raising it also catches, such as the ValueError of a
# JSON parser's hook, is a local affair and needs no entry.)
OUTSIDE: set[tuple[str, str]] = set()


def _modules() -> list[ModuleType]:
    """Every module of cdp and workers, found by file (cdp/segments has no __init__)."""
    found = []
    for package in (cdp, workers):
        root = Path(inspect.getfile(package)).parent
        for path in sorted(root.rglob("*.py")):
            parts = path.relative_to(root.parent).with_suffix("").parts
            if parts[-1] == "__main__":  # importing it would run the program
                continue
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found.append(importlib.import_module(name))
    return found


MODULES = _modules()


def _exception_classes() -> dict[str, type[BaseException]]:
    """Every exception class defined in cdp or workers, by name."""
    out: dict[str, type[BaseException]] = {}
    for module in MODULES:
        for name, obj in vars(module).items():
            if (
                inspect.isclass(obj)
                and issubclass(obj, BaseException)
                and obj.__module__ == module.__name__
            ):
                assert out.get(name, obj) is obj, f"two exception classes named {name}"
                out[name] = obj
    return out


def _drawn_tree() -> dict[str, str]:
    """{class: parent} as ``cdp.errors``' docstring draws it."""
    doc = cdp.errors.__doc__ or ""
    lines = doc[doc.index("\nCdpError\n") + 1 :].splitlines()[1:]
    parents, stack = {}, ["CdpError"]
    for line in lines:
        found = re.match(r"^([│ ]*)[├└]── (\w+)", line)
        if not found:
            break
        depth = len(found.group(1)) // 4
        del stack[depth + 1 :]
        parents[found.group(2)] = stack[depth]
        stack.append(found.group(2))
    return parents


def test_every_exception_class_of_the_project_is_in_the_drawn_tree() -> None:
    classes = _exception_classes()
    drawn = _drawn_tree()
    assert set(classes) == {"CdpError", *drawn}, "cdp.errors' docstring: add or remove"
    for name, parent in drawn.items():
        assert classes[parent] in classes[name].__bases__, f"{name} is drawn under {parent}"
    for name, cls in classes.items():
        assert issubclass(cls, CdpError), name
    for name, obj in vars(cdp.errors).items():
        if inspect.isclass(obj) and obj.__module__ == "cdp.errors":
            assert issubclass(obj, CdpError), name


def _resolve(module: ModuleType, node: ast.expr) -> object:
    if isinstance(node, ast.Name):
        return vars(module).get(node.id, getattr(builtins, node.id, None))
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
        return getattr(vars(module).get(node.value.id), node.attr, None)
    return None


def _raised(module: ModuleType) -> tuple[list[tuple[int, str, object]], list[type]]:
    """(line, name, class or factory) of every ``raise Name(...)`` in the module, and
    the classes its ``except`` clauses catch (Exception and BaseException aside)."""
    tree = ast.parse(Path(inspect.getfile(module)).read_text())
    raised, caught = [], []
    for node in ast.walk(tree):
        if isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call):
            name = ast.unparse(node.exc.func).rsplit(".", 1)[-1]
            raised.append((node.lineno, name, _resolve(module, node.exc.func)))
        elif isinstance(node, ast.ExceptHandler) and node.type is not None:
            types = node.type.elts if isinstance(node.type, ast.Tuple) else [node.type]
            for obj in (_resolve(module, t) for t in types):
                if inspect.isclass(obj) and obj not in (Exception, BaseException):
                    caught.append(obj)
    return raised, caught


def test_everything_raised_on_purpose_descends_from_cdp_error() -> None:
    wrong = []
    for module in MODULES:
        path = Path(inspect.getfile(module))
        api_package = (path.parent / "openapi.json").exists()
        raised, caught = _raised(module)
        for line, name, obj in raised:
            if not inspect.isclass(obj):
                continue  # a factory such as _too_large(): its class is checked where defined
            if issubclass(obj, CdpError) or (path.stem, name) in OUTSIDE:
                continue
            if any(issubclass(obj, c) for c in caught):
                continue  # raised and caught in the same module
            if api_package and issubclass(obj, web.HTTPException):
                continue  # HTTP errors may stay inside the API package
            wrong.append(f"{module.__name__}:{line} raises {name}")
    assert wrong == [], "raise a CdpError (cdp/errors.py) instead"


@pytest.mark.parametrize(
    "identifier",
    ["phone:123", "u1", "P1", "p1x", "p", "p1\n", "", "user:", "email:   ", "anon:\t"],
)
def test_a_malformed_identifier_is_invalid_not_unknown(identifier: str) -> None:
    with pytest.raises(InvalidIdentifier) as caught:
        normalise(identifier)
    assert caught.value.status == 400 and isinstance(caught.value, EventRejected)
    assert repr(identifier) in str(caught.value)


def test_well_formed_identifiers_normalise_and_placeholders_name_nobody() -> None:
    assert normalise("email: A@B.C ") == "email:a@b.c"
    assert normalise("user:u1") == "user:u1"
    assert normalise("p12") == "p12"
    for placeholder in ("user:null", "anon:undefined", "email:0"):
        with pytest.raises(ProfileNotFound, match="blocked placeholder"):
            normalise(placeholder)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            [],
            'invalid webhook: expected {"url": "https://...", "segments": [...], "secret": "..."}',
        ),
        ({"url": "https://x.io", "x": 1}, "invalid webhook: unknown fields ['x']"),
        ({"url": "ftp://x.io"}, "invalid webhook: `url` must be an http:// or https:// URL"),
        ({"url": "http://[x"}, "invalid webhook: `url` must be an http:// or https:// URL"),
        ({"url": "https://x.io", "secret": "short"}, "invalid webhook: `secret` must be a"),
    ],
)
def test_an_invalid_subscription_is_a_400_with_its_reason(body: object, message: str) -> None:
    with pytest.raises(InvalidSubscription) as caught:
        parse_subscription(body, "id1")
    assert caught.value.status == 400 and str(caught.value).startswith(message)

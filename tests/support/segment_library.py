"""The official Segment library (segment-analytics-python) aimed at a test's API."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


@contextmanager
def segment_library(api_port: int, write_key: str = "wk1") -> Iterator[tuple[Any, list[Any]]]:
    """The library's module-level client aimed at the API on ``api_port``, and the errors
    its ``on_error`` reported; its settings are restored afterwards."""
    from segment import analytics as lib

    saved = {
        name: getattr(lib, name)
        for name in ("write_key", "host", "on_error", "max_retries", "default_client")
    }
    errors: list[Any] = []
    lib.write_key = write_key
    lib.host = f"http://127.0.0.1:{api_port}"
    lib.on_error = lambda error, items: errors.append((error, items))
    lib.max_retries = 1
    lib.default_client = None
    try:
        yield lib, errors
    finally:
        if lib.default_client is not None:
            lib.shutdown()
        for name, value in saved.items():
            setattr(lib, name, value)

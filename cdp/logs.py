"""structlog set-up: key=value on a terminal, JSON lines anywhere else.

``TroubleLog`` logs one line per kind of trouble per interval with a count, for what
an abusive client can repeat thousands of times a second.
"""

from __future__ import annotations

import logging
import sys
import time
from collections import Counter
from typing import Any

import structlog


def configure_logging(level: str = "info", fmt: str = "auto") -> None:
    renderer: structlog.types.Processor
    if fmt == "console" or (fmt == "auto" and sys.stderr.isatty()):
        renderer = structlog.dev.ConsoleRenderer()
    else:
        renderer = structlog.processors.JSONRenderer()
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )


class TroubleLog:
    """At most one log line per kind of trouble per ``interval_s``, counting the rest."""

    def __init__(self, name: str, interval_s: float = 10.0) -> None:
        self._log = structlog.get_logger(name)
        self.interval_s = interval_s
        self._seen: Counter[str] = Counter()
        self._last: dict[str, float] = {}

    def due(self, kind: str) -> int:
        """Count one occurrence; when a line is due, the number it reports, else 0."""
        self._seen[kind] += 1
        now = time.monotonic()
        if now - self._last.get(kind, -self.interval_s) < self.interval_s:
            return 0
        self._last[kind] = now
        return self._seen.pop(kind)

    def note(self, kind: str, **fields: Any) -> None:
        if occurrences := self.due(kind):
            self._log.warning(kind, occurrences=occurrences, **fields)

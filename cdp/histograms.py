"""The histograms the workers observe (apply round trips, freshness, pipeline latency),
summed across processes in Redis and shown by ``GET /metrics``.

Each worker keeps its observations in memory (``Observed``) and adds them at its
periodic flush to the shared hash ``keys.histogram(spec.key)`` with
``lua/histogram_add-1.lua`` (per-bucket counts, not cumulative, plus ``sum`` and
``count``; ``workers/ticking.py``); ``read_histogram`` reads one back for
``cdp.metrics.SnapshotCollector``, which renders it with cumulative buckets.
"""

from __future__ import annotations

from bisect import bisect_left
from dataclasses import dataclass
from typing import Any

from cdp.streams import text


@dataclass(frozen=True)
class HistogramSpec:
    """A histogram observed in the worker processes and summed in ``keys.histogram(key)``."""

    key: str  # the name in keys.histogram
    name: str  # the metric family (``_bucket``, ``_sum``, ``_count`` are added)
    help: str
    bounds: tuple[float, ...]  # bucket upper bounds, ascending (+Inf is added)

    @property
    def fields(self) -> list[str]:
        """The hash fields of the buckets (their upper bounds), ``+Inf`` last."""
        return [*(_bound(b) for b in self.bounds), "+Inf"]


def _bound(value: float) -> str:
    return repr(float(value))


APPLY_BATCH = HistogramSpec(
    "apply-batch",
    "cdp_apply_batch_duration_seconds",
    "Duration of one apply round trip, per round trip: with apply-protocol batch, the "
    "pipeline carrying a tick's apply_batch calls (up to 20 batch-size slices, all "
    "partitions) and the worker's counters; with the profile protocol, one "
    "batch-size slice of a partition through apply_partition.",
    (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
_LATENCY_BOUNDS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0)
FRESHNESS = HistogramSpec(
    "freshness",
    "cdp_event_freshness_seconds",
    "Applied time (the worker's clock once the apply answered) minus the event's ts, per "
    "event applied live (mode=import left out). ts is the client's: this includes its "
    "clock skew and any offline delay before sending.",
    (*_LATENCY_BOUNDS, 3600.0),
)
PIPELINE_LATENCY = HistogramSpec(
    "pipeline-latency",
    "cdp_event_pipeline_latency_seconds",
    "Applied time (the worker's clock once the apply answered) minus receivedAt (the "
    "API's clock on acceptance), per event applied live: the pipeline's own part of "
    "the freshness (window-size included).",
    _LATENCY_BOUNDS,
)
HISTOGRAMS = (APPLY_BATCH, FRESHNESS, PIPELINE_LATENCY)


class Observed:
    """A worker's observations of one histogram not yet added to Redis.

    ``increments`` are what a flush adds to the shared hash with the sum
    (``lua/histogram_add-1.lua``, one atomic script per histogram, in
    ``workers/ticking.py``); ``clear`` once it answered, and when its answer was lost
    too (it may have landed: never sent twice). An error reply keeps them for the next
    flush. A SIGKILLed worker loses what it observed since its last flush (at most
    about a ticker-interval).
    """

    def __init__(self, spec: HistogramSpec) -> None:
        self.spec = spec
        self.buckets = [0] * (len(spec.bounds) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.buckets[bisect_left(self.spec.bounds, value)] += 1
        self.sum += value
        self.count += 1

    def increments(self) -> dict[str, int]:
        """The fields a flush adds to (the buckets observed into, and ``count``)."""
        out = {name: n for name, n in zip(self.spec.fields, self.buckets, strict=True) if n}
        out["count"] = self.count
        return out

    def clear(self) -> None:
        self.buckets = [0] * len(self.buckets)
        self.sum = 0.0
        self.count = 0


@dataclass
class Histogram:
    """A histogram as read from Redis: per-bucket counts (not cumulative), sum, count."""

    buckets: list[int]
    sum: float = 0.0
    count: int = 0


def read_histogram(spec: HistogramSpec, raw: Any) -> Histogram:
    """A histogram from its hash as HGETALL answered it (anything else: empty)."""
    if not isinstance(raw, dict):
        raw = {}
    values = {text(k): text(v) for k, v in raw.items()}
    return Histogram(
        [int(values.get(f, 0)) for f in spec.fields],
        float(values.get("sum", 0.0)),
        int(values.get("count", 0)),
    )

"""Every Prometheus metric, defined in one place. The registry is passed in (tests get their own).

No label ever carries token material: outcomes, cache layers and statuses are closed sets.

The metrics touched by every request (requests by outcome, the two latency histograms, cache
and store lookups, malformed credentials) are plain in-process numbers, not
prometheus_client objects: a prometheus_client ``inc`` / ``observe`` takes a lock and a
histogram walks its buckets in Python, ~2.4 us a request on the hot path. Here an increment is
one addition and an observation one C bisect, with no lock: every caller runs on the event loop
thread (gateway.proxy, gateway.websocket, gateway.pipeline, the admin app's forward auth and
/metrics, gateway.forward_httpx: all coroutines of the one loop of a process; nothing calls them
from ``asyncio.to_thread`` or another thread), so no two updates interleave. A ``HotCollector``
registered in the same registry exposes them exactly as the prometheus_client objects did
(names, HELP, TYPE, labels, buckets, ``_sum`` / ``_count``, ``_created``, and their order).
``serve --workers N``: each worker has its own registry and its /metrics shows its own counts
(no multiprocess aggregation, as before). The other metrics stay prometheus_client objects.
"""

from __future__ import annotations

import math
import time
from bisect import bisect_left
from collections.abc import Iterable, Sequence
from typing import TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client import metrics as _prometheus
from prometheus_client.metrics_core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from gateway.errors import OUTCOMES, Outcome

__all__ = ["OUTCOMES", "HotCollector", "HotCounter", "HotCounters", "HotHistogram", "Metrics",
           "Outcome"]
_LATENCY = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class HotCounter:
    """A counter's value (one label set), updated on the event loop thread only (module
    docstring). ``inc`` as prometheus_client's: by 1 or a non-negative amount."""

    __slots__ = ("created", "value")

    def __init__(self) -> None:
        self.value = 0.0
        self.created = time.time()

    def inc(self, amount: float = 1) -> None:
        if amount < 0:
            raise ValueError("Counters can only be incremented by non-negative amounts.")
        self.value += amount


class HotCounters:
    """A counter family: one ``HotCounter`` per value of its label (one, keyed ``""``, when
    it has none), all created up front as the old ``counter.labels(value)`` bindings were."""

    def __init__(self, name: str, documentation: str, label: str | None = None,
                 values: Iterable[str] = ("",)) -> None:
        self.name = name.removesuffix("_total")  # as prometheus_client names the family
        self.documentation = documentation
        self.label = label
        self.children = {value: HotCounter() for value in values}

    def describe(self) -> Metric:
        return CounterMetricFamily(self.name, self.documentation)

    def collect(self, created: bool) -> Metric:
        family = CounterMetricFamily(self.name, self.documentation,
                                     labels=[self.label] if self.label else [])
        for value, child in self.children.items():
            family.add_metric([value] if self.label else [], child.value,
                              child.created if created else None)
        return family


class HotHistogram:
    """A histogram without labels, updated on the event loop thread only (module docstring):
    a count per bucket (not cumulative: ``observe`` adds to one), summed up when collected."""

    __slots__ = ("_bounds", "counts", "created", "documentation", "les", "name", "sum")

    def __init__(self, name: str, documentation: str, buckets: Sequence[float]) -> None:
        bounds = [float(b) for b in buckets]
        if bounds != sorted(bounds):
            raise ValueError("Buckets not in sorted order")
        if bounds[-1] != math.inf:
            bounds.append(math.inf)
        self.name = name
        self.documentation = documentation
        self._bounds = tuple(bounds)
        self.les = [_go_float(b) for b in bounds]  # the "le" labels, as prometheus_client's
        self.counts = [0] * len(bounds)
        self.sum = 0.0
        self.created = time.time()

    def observe(self, amount: float) -> None:
        """As prometheus_client's, but for NaN (never a duration): counted in the first bucket."""
        self.sum += amount
        # the first bucket whose bound is >= amount: prometheus_client's "amount <= bound"
        self.counts[bisect_left(self._bounds, amount)] += 1

    def describe(self) -> Metric:
        return HistogramMetricFamily(self.name, self.documentation)

    def collect(self, created: bool) -> Metric:
        buckets: list[tuple[str, float]] = []
        total = 0.0
        for le, count in zip(self.les, self.counts, strict=True):
            total += count
            buckets.append((le, total))
        family = HistogramMetricFamily(self.name, self.documentation)
        family.add_metric([], buckets, self.sum)  # the buckets, _count, _sum
        if created:
            family.add_sample(f"{self.name}_created", {}, self.created)
        return family


def _go_float(bound: float) -> str:
    text: str = floatToGoString(bound)  # type: ignore[no-untyped-call]
    return text


_F = TypeVar("_F", "HotCounters", "HotHistogram")


class HotCollector(Collector):
    """Exposes hot counters and histograms in the registry, in the order they were added,
    sample for sample as prometheus_client's own ``Counter`` / ``Histogram`` would
    (``_created`` too, unless prometheus_client's ``disable_created_metrics()`` was called)."""

    def __init__(self) -> None:
        self._families: list[HotCounters | HotHistogram] = []

    def add(self, family: _F) -> _F:
        self._families.append(family)
        return family

    def describe(self) -> Iterable[Metric]:
        """The families without samples: the registry checks their names for clashes."""
        return [family.describe() for family in self._families]

    def collect(self) -> Iterable[Metric]:
        created = _prometheus._use_created
        return [family.collect(created) for family in self._families]


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        # The hot path's metrics (module docstring): exposed first, in this order, as before.
        hot = HotCollector()
        requests = hot.add(HotCounters("authgate_requests_total", "Requests by outcome.",
                                       "outcome", OUTCOMES))
        self.outcome: dict[Outcome, HotCounter] = {o: requests.children[o] for o in OUTCOMES}
        self.request_seconds = hot.add(HotHistogram(
            "authgate_request_duration_seconds", "Time from request to response start.",
            _LATENCY))
        self.upstream_seconds = hot.add(HotHistogram(
            "authgate_upstream_duration_seconds", "Time for the upstream's response headers.",
            _LATENCY))
        cache = hot.add(HotCounters("authgate_cache_lookups_total",
                                    "Token lookups by the layer that answered.", "layer",
                                    ("local", "shared", "store")))
        self.cache_layer = cache.children
        self.store_lookups = hot.add(HotCounters(
            "authgate_store_lookups_total", "Token lookups that reached the store.")).children[""]
        self.malformed = hot.add(HotCounters(
            "authgate_malformed_credentials_total",
            "Credentials refused by format or checksum, before any cache or store.")).children[""]
        r.register(hot)
        self.flush_rows = Histogram("authgate_usage_flush_rows", "Tokens written per usage flush.",
                                    buckets=(0, 1, 10, 100, 1000, 10000), registry=r)
        self.flush_lag = Gauge("authgate_usage_flush_lag_seconds",
                               "Age of the oldest usage not yet written.", registry=r)
        self.flush_failures = Counter("authgate_usage_flush_failures_total",
                                      "Usage flushes that failed (kept for the next).", registry=r)
        self.events_folded = Counter(
            "authgate_events_folded_total",
            "Refusal and read events whose token and address were dropped (folded into one "
            "entry per type and reason) because too many distinct ones waited for a flush.",
            registry=r)
        self.tokens = Gauge("authgate_tokens", "Tokens by status.", ["status"], registry=r)
        self.redis_errors = Counter("authgate_redis_errors_total",
                                    "Redis calls that failed (served without Redis).", registry=r)
        # alerts (SPEC §12; gateway/monitor/): labels are kinds and channel types, never URLs
        self.alerts = Counter("authgate_alerts_total", "Alerts raised, by kind.", ["kind"],
                              registry=r)
        self.alert_delivery_failures = Counter(
            "authgate_alert_delivery_failures_total",
            "Alert delivery attempts that failed (retried), by channel type.", ["channel"],
            registry=r)
        self.alert_delivery_lag = Gauge(
            "authgate_alert_delivery_lag_seconds",
            "Age of the oldest alert delivery not yet made (0: none pending).", registry=r)
        self.monitor_checks_skipped = Counter(
            "authgate_monitor_checks_skipped_total",
            "Runs of the alert checks skipped because the store was unreachable.", registry=r)
        self.monitor_leader = Gauge(
            "authgate_monitor_leader", "1 while this replica runs the alert checks.",
            registry=r)
        self.access_log_dropped = Counter(
            "authgate_access_log_dropped_total",
            "Access-log lines dropped because stdout did not keep up (or is gone).", registry=r)

"""The hot-path metrics (gateway.metrics: plain counters and bucket arrays behind a custom
collector) are exposed exactly as prometheus_client's own Counter and Histogram expose the same
observations: names, HELP, TYPE, labels, buckets, _count / _sum / _created, order."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client import metrics as prometheus_metrics
from prometheus_client.parser import text_string_to_metric_families

from gateway.errors import OUTCOMES
from gateway.metrics import _LATENCY, HotHistogram, Metrics

_HOT = ("authgate_requests", "authgate_request_duration_seconds",
        "authgate_upstream_duration_seconds", "authgate_cache_lookups",
        "authgate_store_lookups", "authgate_malformed_credentials")


class Reference:
    """The hot metrics as they were defined with prometheus_client (the expected exposition)."""

    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        requests = Counter("authgate_requests_total", "Requests by outcome.", ["outcome"],
                           registry=r)
        self.outcome = {o: requests.labels(o) for o in OUTCOMES}
        self.request_seconds = Histogram(
            "authgate_request_duration_seconds", "Time from request to response start.",
            buckets=_LATENCY, registry=r)
        self.upstream_seconds = Histogram(
            "authgate_upstream_duration_seconds", "Time for the upstream's response headers.",
            buckets=_LATENCY, registry=r)
        cache = Counter("authgate_cache_lookups_total", "Token lookups by the layer that answered.",
                        ["layer"], registry=r)
        self.cache_layer = {layer: cache.labels(layer) for layer in ("local", "shared", "store")}
        self.store_lookups = Counter("authgate_store_lookups_total",
                                     "Token lookups that reached the store.", registry=r)
        self.malformed = Counter(
            "authgate_malformed_credentials_total",
            "Credentials refused by format or checksum, before any cache or store.", registry=r)


# latencies on and around every bucket bound, 0, below the first and past the last
_SECONDS = [0.0, 1e-9, 0.0009999, *_LATENCY, *(b * 1.0000001 for b in _LATENCY), 0.0031,
            0.7, 29.999, 30.0, 31.0, 1e9]


def _observe(m: Metrics | Reference) -> None:
    for i, seconds in enumerate(_SECONDS):
        m.request_seconds.observe(seconds)
        if i % 3:
            m.upstream_seconds.observe(seconds / 2)
    m.outcome["ok"].inc()
    m.outcome["ok"].inc(2)
    m.outcome["rate_limited"].inc()
    m.outcome["upstream_timeout"].inc(0.5)
    m.cache_layer["local"].inc()
    m.cache_layer["store"].inc(3)
    for _ in range(7):
        m.store_lookups.inc()
    m.malformed.inc()


def _hot_text(registry: CollectorRegistry) -> str:
    """The exposition of the hot families, their _created timestamps blanked (they differ by
    the microseconds between the two objects' creation)."""
    lines = [line for line in generate_latest(registry).decode().splitlines()
             if re.match(r"(# (HELP|TYPE) )?(" + "|".join(_HOT) + r")[_{ ]", line)]
    return "\n".join(re.sub(r"(_created(\{[^}]*\})?) \S+$", r"\1 T", line) for line in lines)


def _samples(registry: CollectorRegistry) -> list[tuple[str, str, str, list[tuple[object, ...]]]]:
    return [(f.name, f.documentation, f.type,
             [(s.name, s.labels, "T" if s.name.endswith("_created") else s.value)
              for s in f.samples])
            for f in text_string_to_metric_families(generate_latest(registry).decode())
            if f.name in _HOT]


@pytest.fixture(params=[True, False], ids=["created", "no-created"])
def created(request: pytest.FixtureRequest) -> Iterator[bool]:
    if not request.param:
        prometheus_metrics.disable_created_metrics()
    try:
        yield request.param
    finally:
        prometheus_metrics.enable_created_metrics()


@pytest.mark.parametrize("observed", [False, True], ids=["fresh", "observed"])
def test_the_hot_metrics_are_exposed_as_prometheus_client_exposed_them(
        created: bool, observed: bool) -> None:
    ours, reference = Metrics(), Reference()
    if observed:
        _observe(ours)
        _observe(reference)
    assert _samples(ours.registry) == _samples(reference.registry)
    assert _hot_text(ours.registry) == _hot_text(reference.registry)  # HELP, TYPE, order too
    assert ("_created" in _hot_text(ours.registry)) is created
    assert len(_samples(ours.registry)) == len(_HOT)


def test_the_hot_metrics_come_first_then_the_others_as_before() -> None:
    names = [f.name for f in Metrics().registry.collect()]
    assert names[:len(_HOT)] == list(_HOT)
    assert names[len(_HOT)] == "authgate_usage_flush_rows"
    assert len(names) == len(set(names))


def test_sample_values_read_through_the_registry() -> None:
    metrics = Metrics()
    metrics.outcome["no_credential"].inc()
    metrics.store_lookups.inc()
    metrics.cache_layer["shared"].inc(2)
    metrics.request_seconds.observe(0.003)
    value = metrics.registry.get_sample_value
    assert value("authgate_requests_total", {"outcome": "no_credential"}) == 1.0
    assert value("authgate_requests_total", {"outcome": "ok"}) == 0.0
    assert value("authgate_store_lookups_total") == 1.0
    assert value("authgate_cache_lookups_total", {"layer": "shared"}) == 2.0
    assert value("authgate_request_duration_seconds_bucket", {"le": "0.0025"}) == 0.0
    assert value("authgate_request_duration_seconds_bucket", {"le": "0.005"}) == 1.0
    assert value("authgate_request_duration_seconds_bucket", {"le": "+Inf"}) == 1.0
    assert value("authgate_request_duration_seconds_count") == 1.0
    assert value("authgate_request_duration_seconds_sum") == 0.003


def test_a_counter_refuses_a_negative_increment() -> None:
    metrics = Metrics()
    with pytest.raises(ValueError, match="non-negative"):
        metrics.outcome["ok"].inc(-1)
    assert metrics.registry.get_sample_value("authgate_requests_total", {"outcome": "ok"}) == 0


def test_a_hot_name_cannot_be_registered_twice() -> None:
    metrics = Metrics()
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        Counter("authgate_store_lookups_total", "again", registry=metrics.registry)
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        Histogram("authgate_upstream_duration_seconds", "again", registry=metrics.registry)


def test_a_histogram_refuses_unsorted_buckets_and_adds_inf() -> None:
    with pytest.raises(ValueError, match="sorted"):
        HotHistogram("h", "h", (1.0, 0.5))
    assert HotHistogram("h", "h", (1.0,)).les == ["1.0", "+Inf"]

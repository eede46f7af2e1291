"""Every Prometheus metric, defined in one place. The registry is passed in (tests get their own).

No label ever carries token material: outcomes, cache layers and statuses are closed sets.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from gateway.errors import OUTCOMES, Outcome

__all__ = ["OUTCOMES", "Metrics", "Outcome"]
_LATENCY = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        requests = Counter("authgate_requests_total", "Requests by outcome.", ["outcome"],
                           registry=r)
        # bound once, not per request
        self.outcome: dict[Outcome, Counter] = {o: requests.labels(o) for o in OUTCOMES}
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

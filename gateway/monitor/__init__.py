"""Monitoring, alerts and lifecycle automation (SPEC §12).

    config     gateway.config.Alerts (the ``alerts`` key)
    model.py   what an alert is; kinds and severities
    checks.py  lifecycle checks and detectors: candidate alerts from what the gateway keeps
    repo.py    the alerts, outbox and lease tables (migrations 006; SQL in alerts.sql)
    outbox.py  delivery worker: claim, send, back off, give up after 24 h
    channels.py webhook (Standard Webhooks), slack, teams, discord, email, log
    watcher.py the lease, the check loop, store_unreachable, reconfigure, alerts test

Built by gateway.services only when ``alerts`` is set: nothing here touches the request path.
"""

from gateway.monitor.model import KINDS, SEVERITIES, Alert
from gateway.monitor.repo import AlertFilter, AlertStore
from gateway.monitor.watcher import Watcher

__all__ = ["KINDS", "SEVERITIES", "Alert", "AlertFilter", "AlertStore", "Watcher"]

"""The Redis Cluster and Sentinel cache URLs (SPEC §3), parsed without importing the driver
(config validation uses this; ``gateway.redis_client`` builds the clients from it).

    redis+cluster://[user:pw@]host1:6379,host2:6379/          any seed nodes; database 0 only
    redis+sentinel://[user:pw@]host1:26379,host2:26379/MASTER_NAME[/DB]

The credentials are the data nodes' (the cluster's nodes, the Sentinel-managed master); the
sentinels themselves are asked without them. Errors never repeat the URL (it may hold a
password).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import unquote

CLUSTER, SENTINEL = "redis+cluster", "redis+sentinel"
DEFAULT_PORTS = {CLUSTER: 6379, SENTINEL: 26379}
_HOST = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+)(?::([0-9]{1,5}))?$")
_MASTER = re.compile(r"[A-Za-z0-9._-]{1,128}$")


@dataclass(frozen=True, slots=True)
class Topology:
    scheme: str  # CLUSTER or SENTINEL
    nodes: tuple[tuple[str, int], ...]  # seed nodes, or the sentinels
    username: str | None = None
    password: str | None = None
    master: str | None = None  # Sentinel: the monitored master's name
    db: int = 0


def _node(text: str, default_port: int) -> tuple[str, int]:
    m = _HOST.match(text)
    if m is None:
        raise ValueError(f"host {text!r} is not host or host:port")
    port = int(m.group(2)) if m.group(2) else default_port
    if not 0 < port < 65536:
        raise ValueError(f"port {port} is out of range")
    return m.group(1).strip("[]"), port


def parse_topology(url: str) -> Topology:
    """Parse a ``redis+cluster://`` or ``redis+sentinel://`` URL; ValueError says what is wrong
    (never echoing the URL)."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in DEFAULT_PORTS:
        raise ValueError("must be redis+cluster://... or redis+sentinel://...")
    if "?" in rest or "#" in rest:
        raise ValueError(f"{scheme}:// takes no query string or fragment")
    netloc, _, path = rest.partition("/")
    username = password = None
    if "@" in netloc:
        userinfo, _, netloc = netloc.rpartition("@")
        user, colon, pw = userinfo.partition(":")
        username, password = (unquote(user) or None), (unquote(pw) if colon else None)
    if not netloc:
        raise ValueError(f"{scheme}:// needs at least one host:port")
    nodes = tuple(_node(h, DEFAULT_PORTS[scheme]) for h in netloc.split(","))
    if scheme == CLUSTER:
        if path.strip("/") not in ("", "0"):
            raise ValueError("redis+cluster:// has database 0 only: nothing may follow the "
                             "hosts but '/'")
        return Topology(scheme, nodes, username, password)
    parts = path.strip("/").split("/") if path.strip("/") else []
    if not parts:
        raise ValueError("redis+sentinel:// needs the master's name: "
                         "redis+sentinel://host:26379/MASTER_NAME/DB")
    if len(parts) > 2 or not _MASTER.match(parts[0]):
        raise ValueError("redis+sentinel:// path must be /MASTER_NAME or /MASTER_NAME/DB")
    db = 0
    if len(parts) == 2:
        if not re.fullmatch(r"[0-9]{1,5}", parts[1]):
            raise ValueError(f"database {parts[1]!r} is not a number")
        db = int(parts[1])
    return Topology(scheme, nodes, username, password, parts[0], db)

"""The client address (SPEC §6): the TCP peer, or, behind trusted proxies, what they say it is.

With ``trusted_proxies`` empty (the default) the client address is the TCP peer and a client's own
``X-Forwarded-For`` changes nothing. When the peer is in ``trusted_proxies``, every
``X-Forwarded-For`` header is joined in order and read from the right: each entry that is itself a
trusted proxy is a hop to walk past; the first one that is not is the client.

Spellings: ``1.2.3.4``, ``1.2.3.4:5678``, ``2001:db8::1``, ``[2001:db8::1]``,
``[2001:db8::1]:443`` and IPv4-mapped IPv6 (``::ffff:1.2.3.4``, read as ``1.2.3.4``) are addresses;
empty list elements are skipped (``a,,b``, as HTTP list syntax allows). Anything else
(``unknown``, ``_hidden``, a host name, junk) is never taken as an address: the walk stops and the
client address is the last hop that could be vouched for, i.e. the trusted proxy that passed the
garbage on. That errs toward stricter limits (the proxy's address is shared by its clients),
never toward an address the client chose.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterable, Sequence

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Headers = Sequence[tuple[bytes, bytes]]

MAX_HOPS = 32  # entries read from the right at most: a long forged chain costs bounded work


def parse_network(value: str) -> Network:
    """A ``trusted_proxies`` entry: an address or a CIDR. Host bits set is a mistake, not a net."""
    net = ipaddress.ip_network(value.strip(), strict=True)
    if isinstance(net, ipaddress.IPv6Network) and net.prefixlen >= 96:
        mapped = net.network_address.ipv4_mapped
        if mapped is not None:  # ::ffff:10.0.0.0/104 -> 10.0.0.0/8: peers are unwrapped too
            return ipaddress.ip_network(f"{mapped}/{net.prefixlen - 96}")
    return net


def parse_address(value: str) -> Address | None:
    """One X-Forwarded-For entry (or a peer) as an address; None for anything that is not one."""
    text = value.strip()
    if not text or len(text) > 64:
        return None
    if text.startswith("["):  # [v6] or [v6]:port
        end = text.find("]")
        if end < 0 or (end + 1 < len(text) and not _is_port(text[end + 1:])):
            return None
        text = text[1:end]
    elif text.count(":") == 1:  # v4:port (a bare v6 has at least two colons)
        text, _, port = text.partition(":")
        if not port.isdigit():
            return None
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def _is_port(rest: str) -> bool:
    return rest.startswith(":") and rest[1:].isdigit() and len(rest) <= 6


class ClientAddresses:
    """Resolves the client address for a request, given the configured trusted proxies."""

    def __init__(self, trusted: Iterable[str]) -> None:
        self._nets = tuple(parse_network(t) for t in trusted)

    def __bool__(self) -> bool:
        return bool(self._nets)

    def trusted(self, addr: Address) -> bool:
        return any(addr in net for net in self._nets)

    def resolve(self, peer: str | None, headers: Headers) -> str | None:
        if peer is None or not self._nets:
            return peer
        hop = parse_address(peer)
        if hop is None or not self.trusted(hop):
            return peer
        entries = _forwarded_for(headers)
        for entry in reversed(entries[-MAX_HOPS:]):
            if not entry.strip():
                continue
            addr = parse_address(entry)
            if addr is None:  # garbage: the trusted hop that passed it on is all we know
                return str(hop)
            if not self.trusted(addr):
                return str(addr)
            hop = addr
        return str(hop)  # every entry trusted (or none at all): the furthest hop known


def _forwarded_for(headers: Headers) -> list[str]:
    """Every X-Forwarded-For header, joined in the order received, split into entries."""
    values = [v for n, v in headers if n == b"x-forwarded-for"]
    if not values:
        return []
    return b",".join(values).decode("latin-1").split(",")


@functools.lru_cache(maxsize=4096)
def limit_key(ip: str | None) -> str | None:
    """The key a client address is limited and alerted by: an IPv4 address itself, an IPv6
    address's /64 (``2001:db8:1:2::/64``: one site or host is given a /64, so each /128 of it
    having its own failed-auth budget would be 2^64 budgets); an IPv4-mapped IPv6 is its IPv4.
    Anything that is not an address (None, a name) is its own key. Cached: the hot path pays a
    dict lookup."""
    if ip is None:
        return None
    addr = parse_address(ip)
    if addr is None:
        return ip
    if isinstance(addr, ipaddress.IPv6Address):
        return str(ipaddress.IPv6Network((int(addr) >> 64 << 64, 64)))
    return str(addr)

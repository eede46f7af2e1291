"""The client address (SPEC §6) and identity-value encoding: pure functions, no I/O."""

from __future__ import annotations

import pytest

from gateway.addresses import ClientAddresses, limit_key, parse_address, parse_network
from gateway.pipeline import header_value

TRUSTED = ClientAddresses(["10.0.0.0/8", "2001:db8:f::/48", "192.0.2.1"])


def xff(*values: str) -> list[tuple[bytes, bytes]]:
    return [(b"x-forwarded-for", v.encode("latin-1")) for v in values]


@pytest.mark.parametrize("peer, headers, client", [
    # by default (and from an untrusted peer) the peer, whatever the client wrote
    ("203.0.113.5", xff("198.51.100.1"), "203.0.113.5"),
    # a trusted peer: the rightmost entry that is not itself trusted
    ("10.0.0.2", xff("198.51.100.1"), "198.51.100.1"),
    ("10.0.0.2", xff("6.6.6.6, 198.51.100.1"), "198.51.100.1"),  # the client's own entry: left
    ("10.0.0.2", xff("198.51.100.1, 10.1.1.1, 192.0.2.1"), "198.51.100.1"),  # trusted hops
    # several X-Forwarded-For headers are one list, in the order received
    ("10.0.0.2", xff("198.51.100.1", "10.9.9.9"), "198.51.100.1"),
    ("10.0.0.2", xff("6.6.6.6", "198.51.100.1, 10.9.9.9"), "198.51.100.1"),
    # spellings: ports, brackets, IPv6, IPv4-mapped IPv6, spaces, empty list elements
    ("10.0.0.2", xff("198.51.100.1:4711"), "198.51.100.1"),
    ("10.0.0.2", xff("[2001:DB8::1]"), "2001:db8::1"),
    ("10.0.0.2", xff("[2001:db8::1]:443"), "2001:db8::1"),
    ("10.0.0.2", xff("2001:db8::1"), "2001:db8::1"),
    ("10.0.0.2", xff("::ffff:198.51.100.1"), "198.51.100.1"),
    ("10.0.0.2", xff("  198.51.100.1 ,, "), "198.51.100.1"),
    ("2001:db8:f::9", xff("198.51.100.1, 2001:db8:f::1"), "198.51.100.1"),  # v6 proxies
    ("::ffff:10.0.0.2", xff("198.51.100.1"), "198.51.100.1"),  # a dual-stack socket's peer
    # garbage is never an address: the trusted hop that passed it on is the client
    ("10.0.0.2", xff("unknown"), "10.0.0.2"),
    ("10.0.0.2", xff("198.51.100.1, _hidden, 10.0.0.3"), "10.0.0.3"),
    ("10.0.0.2", xff("evil.example"), "10.0.0.2"),
    ("10.0.0.2", xff("1.2.3.4.5"), "10.0.0.2"),
    ("10.0.0.2", xff("[::1"), "10.0.0.2"),
    ("10.0.0.2", xff("1.2.3.4:port"), "10.0.0.2"),
    ("10.0.0.2", xff("x" * 5000), "10.0.0.2"),
    # nothing untrusted: the furthest hop known; no header at all: the peer
    ("10.0.0.2", xff("10.0.0.7, 10.0.0.8"), "10.0.0.7"),
    ("10.0.0.2", [], "10.0.0.2"),
    ("10.0.0.2", [(b"x-real-ip", b"198.51.100.1")], "10.0.0.2"),
    (None, xff("198.51.100.1"), None),
    ("not-an-ip", xff("198.51.100.1"), "not-an-ip"),
])
def test_client_address(peer, headers, client):
    assert TRUSTED.resolve(peer, headers) == client


def test_no_trusted_proxies_is_the_peer_as_given():
    none = ClientAddresses([])
    assert not none
    assert none.resolve("127.0.0.1", xff("198.51.100.1")) == "127.0.0.1"


def test_a_long_forged_chain_costs_bounded_work():
    chain = ", ".join(["10.0.0.1"] * 10_000)
    assert TRUSTED.resolve("10.0.0.2", xff(chain)) == "10.0.0.1"


@pytest.mark.parametrize("value", ["10.0.0.0/8", "192.0.2.1", "::1", "2001:db8::/32",
                                   " 10.0.0.0/8 "])
def test_networks(value):
    parse_network(value)


@pytest.mark.parametrize("value", ["10.0.0.1/8", "nope", "10.0.0.0/33", "", "10.0.0.0/8,1.1.1.1"])
def test_bad_networks(value):
    with pytest.raises(ValueError):
        parse_network(value)


def test_mapped_networks_match_unwrapped_peers():
    assert TRUSTED.trusted(parse_address("10.1.2.3"))  # type: ignore[arg-type]
    mapped = ClientAddresses(["::ffff:10.0.0.0/104"])
    assert mapped.resolve("10.0.0.2", xff("198.51.100.1")) == "198.51.100.1"


@pytest.mark.parametrize("value, sent", [
    ("alice", "alice"),
    ("Łukasz", "%C5%81ukasz"),  # SPEC §6's own example
    ("José", "Jos%C3%A9"),  # Latin-1 too: the value is UTF-8, never Latin-1
    ("100%", "100%25"),  # "%" itself, or "%41" could mean "A" or itself
    ("a b/c:d@e", "a b/c:d@e"),  # printable ASCII as is, spaces included
    ("a\r\nX-Auth-Admin: 1", "a%0D%0AX-Auth-Admin: 1"),
    ("tab\there\x7f", "tab%09here%7F"),
    ("😀", "%F0%9F%98%80"),
])
def test_identity_values_outside_printable_ascii_are_percent_encoded(value, sent):
    assert header_value(value) == sent
    assert header_value(value).isascii() and header_value(value).isprintable()


@pytest.mark.parametrize("ip, key", [
    ("2001:db8:1:2::1", "2001:db8:1:2::/64"),
    ("2001:DB8:1:2:ffff:ffff:ffff:ffff", "2001:db8:1:2::/64"),
    ("[2001:db8:1:2::9]:443", "2001:db8:1:2::/64"),
    ("2001:db8:1:3::1", "2001:db8:1:3::/64"),  # the next /64 is another client
    ("::1", "::/64"),
    ("::ffff:198.51.100.7", "198.51.100.7"),  # IPv4-mapped: the IPv4, per address
    ("198.51.100.7", "198.51.100.7"),
    ("198.51.100.7:4711", "198.51.100.7"),
    (None, None),
    ("testclient", "testclient"),  # not an address (a test client, a socket): itself
])
def test_limit_key_is_an_ipv6_clients_64_and_an_ipv4_address(ip, key):
    assert limit_key(ip) == key
    assert limit_key(ip) == key  # cached: the same answer

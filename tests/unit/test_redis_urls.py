"""Cluster and Sentinel cache URLs (SPEC §3): what they parse to, and config validation that
refuses a malformed one in one line naming ``cache``, never echoing the URL (it may hold a
password)."""

from __future__ import annotations

import pytest

from gateway.config import load_settings
from gateway.errors import ConfigError
from gateway.redis_urls import Topology, parse_topology


@pytest.mark.parametrize(("url", "expected"), [
    ("redis+cluster://10.0.0.1:6379,10.0.0.2:6380/",
     Topology("redis+cluster", (("10.0.0.1", 6379), ("10.0.0.2", 6380)))),
    ("redis+cluster://redis-0.redis", Topology("redis+cluster", (("redis-0.redis", 6379),))),
    ("redis+cluster://u:p%40ss@[::1]:7000/0",
     Topology("redis+cluster", (("::1", 7000),), "u", "p@ss")),
    ("redis+sentinel://s1:26379,s2/mymaster/3",
     Topology("redis+sentinel", (("s1", 26379), ("s2", 26379)), None, None, "mymaster", 3)),
    ("redis+sentinel://:pw@s1/mymaster",
     Topology("redis+sentinel", (("s1", 26379),), None, "pw", "mymaster", 0)),
])
def test_valid_urls(url, expected):
    assert parse_topology(url) == expected


@pytest.mark.parametrize(("url", "why"), [
    ("redis+cluster://", "at least one host"),
    ("redis+cluster:///", "at least one host"),
    ("redis+cluster://h1:6379,,h2:6379/", "host ''"),
    ("redis+cluster://h1:port/", "host:port"),
    ("redis+cluster://h1:0/", "out of range"),
    ("redis+cluster://h1:70000/", "out of range"),
    ("redis+cluster://h1 h2/", "host:port"),
    ("redis+cluster://h1:6379/3", "database 0 only"),
    ("redis+cluster://h1:6379/?ssl=true", "no query string"),
    ("redis+sentinel://s1:26379", "master's name"),
    ("redis+sentinel://s1:26379/", "master's name"),
    ("redis+sentinel://s1:26379/mymaster/x", "not a number"),
    ("redis+sentinel://s1:26379/mymaster/1/2", "/MASTER_NAME/DB"),
    ("redis+sentinel://s1:26379/my master/1", "/MASTER_NAME/DB"),
])
def test_malformed_urls_say_what_is_wrong(url, why):
    with pytest.raises(ValueError) as e:
        parse_topology(url)
    assert why in str(e.value)


@pytest.mark.parametrize("url", [
    "redis+cluster://admin:hunter2secret@h1:99999/",
    "redis+sentinel://admin:hunter2secret@s1/mymaster/nope",
    "redis+cluster://admin:hunter2secret@/",
])
def test_config_refuses_a_malformed_url_naming_cache_without_the_password(url):
    with pytest.raises(ConfigError) as e:
        load_settings(env={"AUTHGATE_CACHE": url})
    assert len(e.value.problems) == 1 and e.value.problems[0].startswith("cache: ")
    assert "hunter2secret" not in str(e.value)


def test_config_accepts_cluster_and_sentinel_urls():
    for url in ("redis+cluster://h1:6379,h2:6379/", "redis+sentinel://s1:26379/mymaster/0"):
        assert load_settings(env={"AUTHGATE_CACHE": url}).cache == url


def test_the_client_table_picks_one_class_per_topology():
    from gateway.redis_client import CLIENTS, ClusterRedisClient, RedisClient, SentinelRedisClient

    assert CLIENTS == {"redis": RedisClient, "rediss": RedisClient,
                       "redis+cluster": ClusterRedisClient,
                       "redis+sentinel": SentinelRedisClient}

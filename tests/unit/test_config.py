from __future__ import annotations

import pytest

from gateway.config import RateLimit, load_settings, parse_duration, parse_rate_limit
from gateway.errors import ConfigError


@pytest.mark.parametrize(("text", "seconds"), [
    ("30d", 2592000), ("12h", 43200), ("90m", 5400), ("45s", 45), ("0s", 0), ("120", 120), (7, 7),
])
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("bad", ["banana", "5w", "-5s", "1.5h", "", "d", -1, True, None, "30 d"])
def test_bad_durations(bad):
    with pytest.raises(ValueError):
        parse_duration(bad)


@pytest.mark.parametrize(("text", "limit"), [
    ("10/second", RateLimit(10, 1)), ("100/minute", RateLimit(100, 60)),
    ("5/hour", RateLimit(5, 3600)), ("1/day", RateLimit(1, 86400)),
    ({"limit": 3, "window_s": 7}, RateLimit(3, 7)),
])
def test_rate_limits(text, limit):
    assert parse_rate_limit(text) == limit


@pytest.mark.parametrize("bad", ["5/fortnight", "0/minute", "-1/minute", "x/minute", "5",
                                 {"limit": 0, "window_s": 1}, {"limit": "5", "window_s": 1},
                                 {"limit": 5}, 5])
def test_bad_rate_limits(bad):
    with pytest.raises(ValueError):
        parse_rate_limit(bad)


def test_defaults_are_the_embedded_backends():
    s = load_settings(env={})
    assert s.store == "sqlite:///./authgate.db" and s.cache == "memory://"
    assert s.default_rate_limit == RateLimit(1000, 60)
    assert s.identity_headers.subject == "X-Auth-Subject"


def test_flag_beats_env_beats_file(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("listen: 127.0.0.1:1001\nadmin_listen: 127.0.0.1:2001\nupstream: http://a:1\n")
    env = {"AUTHGATE_LISTEN": "127.0.0.1:1002", "AUTHGATE_ADMIN_LISTEN": "127.0.0.1:2002"}
    s = load_settings(str(f), env=env, flags={"listen": "127.0.0.1:1003"})
    assert s.listen == "127.0.0.1:1003"
    assert s.admin_listen == "127.0.0.1:2002"
    assert s.upstream == "http://a:1"


def test_config_file_from_environment(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("token_prefix: sk\n")
    assert load_settings(env={"AUTHGATE_CONFIG": str(f)}).token_prefix == "sk"


def test_structured_keys_as_json_in_environment():
    s = load_settings(env={
        "AUTHGATE_ROUTES": '[{"path": "/public/*", "auth": "none"}]',
        "AUTHGATE_ROLES": '{"ops": ["deploy", "read"]}',
        "AUTHGATE_DEFAULT_RATE_LIMIT": "null",
    })
    assert s.routes[0].auth == "none"
    assert s.roles == {"ops": ("deploy", "read")}
    assert s.default_rate_limit is None


def test_trusted_proxies_from_file_and_environment(tmp_path):
    assert load_settings(env={}).trusted_proxies == ()
    s = load_settings(env={"AUTHGATE_TRUSTED_PROXIES": '["10.0.0.0/8", "::1", "192.0.2.7"]'})
    assert s.trusted_proxies == ("10.0.0.0/8", "::1", "192.0.2.7")
    f = tmp_path / "c.yaml"
    f.write_text("trusted_proxies: [172.16.0.0/12, 'fd00::/8']\n")
    assert load_settings(str(f), env={}).trusted_proxies == ("172.16.0.0/12", "fd00::/8")


def test_a_bad_trusted_proxy_names_its_entry():
    [problem] = _problems(env={"AUTHGATE_TRUSTED_PROXIES": '["10.0.0.0/8", "10.0.0.300"]'})
    assert problem.startswith("trusted_proxies: entry 1 ('10.0.0.300')"), problem


def test_unrelated_authgate_variables_are_ignored():
    # Kubernetes injects these for a Service named "authgate".
    load_settings(env={"AUTHGATE_PORT": "tcp://10.0.0.1:80", "AUTHGATE_SERVICE_HOST": "x"})


def _problems(**kw) -> list[str]:
    with pytest.raises(ConfigError) as e:
        load_settings(**kw)
    return e.value.problems


def test_unknown_key_is_named(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("listne: 127.0.0.1:1\n")
    assert _problems(config_file=str(f), env={}) == ["listne: unknown key"]


def test_every_problem_is_reported_each_naming_its_key(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text(
        "default_rate_limit: 5/fortnight\nlisten: nowhere\nadmin_token: short\n"
        "routes:\n  - path: reports\n    methods: [FETCH]\n")
    problems = _problems(config_file=str(f), env={})
    keys = sorted(p.split(":", 1)[0] for p in problems)
    assert keys == ["admin_token", "default_rate_limit", "listen", "routes.0.methods",
                    "routes.0.path"]


@pytest.mark.parametrize(("env", "key"), [
    ({"AUTHGATE_STORE": "mysql://x"}, "store"),
    ({"AUTHGATE_CACHE": "memcached://x"}, "cache"),
    ({"AUTHGATE_TOKEN_PREFIX": "Bad-Prefix"}, "token_prefix"),
    ({"AUTHGATE_LOCAL_CACHE_TTL_S": "soon"}, "local_cache_ttl_s"),
    ({"AUTHGATE_ROUTES": "[not json"}, "routes"),
    ({"AUTHGATE_ROLES": '{"r": ["bad scope"]}'}, "roles"),
    ({"AUTHGATE_UPSTREAM": "ftp://x"}, "upstream"),
    ({"AUTHGATE_IDENTITY_HEADERS": '{"subject": "bad header"}'}, "identity_headers.subject"),
    ({"AUTHGATE_TRUSTED_PROXIES": '["10.0.0.0/8", "10.0.0.300"]'}, "trusted_proxies"),
    ({"AUTHGATE_TRUSTED_PROXIES": '["10.0.0.1/8"]'}, "trusted_proxies"),
    ({"AUTHGATE_TRUSTED_PROXIES": '["lb.internal"]'}, "trusted_proxies"),
    ({"AUTHGATE_TRUSTED_PROXIES": '"10.0.0.0/8"'}, "trusted_proxies"),
    ({"AUTHGATE_TRUSTED_PROXIES": "10.0.0.0/8"}, "trusted_proxies"),
])
def test_bad_values_name_their_key(env, key):
    problems = _problems(env=env)
    assert len(problems) == 1 and problems[0].startswith(f"{key}:"), problems


def test_unreadable_or_invalid_yaml(tmp_path):
    assert "cannot read" in _problems(config_file=str(tmp_path / "missing.yaml"), env={})[0]
    f = tmp_path / "c.yaml"
    f.write_text("a: [\n")
    assert "not valid YAML" in _problems(config_file=str(f), env={})[0]


def test_settings_are_frozen():
    s = load_settings(env={})
    with pytest.raises(ValueError):
        s.listen = "x:1"  # type: ignore[misc]


def test_the_example_config_is_valid_and_documents_every_key():
    from pathlib import Path

    import yaml

    from gateway.config import KEYS

    path = Path(__file__).parents[2] / "config" / "authgate.yaml"
    s = load_settings(str(path), env={})
    assert len(s.routes) == 3 and s.routes[2].rate_limit == RateLimit(10, 1)
    assert set(yaml.safe_load(path.read_text())) == set(KEYS)

"""Subject suspension and the creation limit end to end (SPEC §3, §5, §7, §8): real gateways on
loopback, on both backend pairs; two replicas sharing PostgreSQL + Redis for the bound."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from tests.e2e.conftest import RunningGateway
from tests.e2e.test_cli import authgate

BOOT = "subjects-admin-secret-000001"
ADMIN = {"Authorization": f"Bearer {BOOT}"}
TTL_S = 1.0
BOUND_S = TTL_S + 1.0
PEPPER = "e2e-pepper"  # the start_gateway fixture's


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


async def create(http: httpx.AsyncClient, gw: RunningGateway, subject: str, name: str = "n",
                 scopes: list[str] | None = None,
                 headers: dict[str, str] | None = None) -> dict[str, Any]:
    r = await http.post(f"{gw.admin}/v1/tokens", headers=headers or ADMIN,
                        json={"subject": subject, "name": name, "scopes": scopes or ["read"]})
    assert r.status_code == 201, r.text
    data: dict[str, Any] = r.json()
    return data


async def start(start_gateway: Any, **extra: Any) -> RunningGateway:
    gw: RunningGateway = await start_gateway(
        admin_token=BOOT, failed_auth_limit=None, default_rate_limit=None,
        local_cache_ttl_s=TTL_S, **extra)
    return gw


async def test_a_suspended_subjects_tokens_are_refused_everywhere_until_resumed(
        start_gateway, http):
    gw = await start(start_gateway)
    alice = await create(http, gw, "alice")
    alice_admin = await create(http, gw, "alice", "ops", ["authgate:admin"])
    bob = await create(http, gw, "bob")
    for t in (alice, bob):  # warm the caches
        assert (await http.get(f"{gw.proxy}/echo", headers=bearer(t["token"]))).status_code == 200

    r = await http.post(f"{gw.admin}/v1/subjects/alice/suspend", headers={
        **ADMIN, "User-Agent": "ops-console/2"}, json={"reason": "key leaked"})
    assert r.status_code == 200
    body = r.json()
    assert body["subject"] == "alice" and body["suspended"] is True
    assert body["reason"] == "key leaked" and body["actor"] == "admin:bootstrap"
    assert body["suspended_at"].endswith("Z")

    r = await http.get(f"{gw.proxy}/echo", headers=bearer(alice["token"]))
    assert r.status_code == 401 and r.json()["error"] == "invalid_token"
    assert 'error="invalid_token"' in r.headers["www-authenticate"]
    r = await http.get(f"{gw.admin}/v1/authorize", headers=bearer(alice["token"]))
    assert r.status_code == 401
    r = await http.get(f"{gw.admin}/v1/tokens", headers=bearer(alice_admin["token"]))
    assert r.status_code == 401  # an admin token of a suspended subject too
    r = await http.post(f"{gw.admin}/v1/introspect", headers=ADMIN, data={"token": alice["token"]})
    assert r.json() == {"active": False}
    assert (await http.get(f"{gw.proxy}/echo", headers=bearer(bob["token"]))).status_code == 200

    # nothing was revoked: the records are active
    r = await http.get(f"{gw.admin}/v1/tokens/{alice['id']}", headers=ADMIN)
    assert r.json()["status"] == "active" and r.json()["revoked_at"] is None
    # listed, and its state readable
    r = await http.get(f"{gw.admin}/v1/subjects/suspended", headers=ADMIN)
    assert [(i["subject"], i["reason"]) for i in r.json()["items"]] == [("alice", "key leaked")]
    assert r.json()["next_cursor"] is None
    r = await http.get(f"{gw.admin}/v1/subjects/alice/suspension", headers=ADMIN)
    assert r.json()["suspended"] is True
    r = await http.get(f"{gw.admin}/v1/subjects/bob/suspension", headers=ADMIN)
    assert r.json() == {"subject": "bob", "suspended": False, "reason": None,
                        "suspended_at": None, "actor": None}
    # a token created while suspended is refused too
    late = await create(http, gw, "alice", "late")
    assert (await http.get(f"{gw.proxy}/echo", headers=bearer(late["token"]))).status_code == 401

    # suspending again changes nothing (one event)
    r = await http.post(f"{gw.admin}/v1/subjects/alice/suspend", headers=ADMIN,
                        json={"reason": "again"})
    assert r.status_code == 200 and r.json()["reason"] == "key leaked"

    await gw.gateway.usage.flush()
    failed, _ = await gw.gateway.authority.events(type="auth_failed", limit=100)
    refused = {(e.token_id, e.subject, e.details["reason"]) for e in failed}
    assert {(alice["id"], "alice", "suspended"), (alice_admin["id"], "alice", "suspended"),
            (late["id"], "alice", "suspended")} <= refused
    done, _ = await gw.gateway.authority.events(type="subject_suspended")
    assert [(e.subject, e.actor, e.ip, e.user_agent, dict(e.details)) for e in done] == [
        ("alice", "admin:bootstrap", "127.0.0.1", "ops-console/2", {"reason": "key leaked"})]

    r = await http.post(f"{gw.admin}/v1/subjects/alice/resume", headers=ADMIN)
    assert r.status_code == 200 and r.json()["suspended"] is False
    for t in (alice, late):
        assert (await http.get(f"{gw.proxy}/echo", headers=bearer(t["token"]))).status_code == 200
    r = await http.get(f"{gw.admin}/v1/tokens", headers=bearer(alice_admin["token"]))
    assert r.status_code == 200
    r = await http.get(f"{gw.admin}/v1/subjects/suspended", headers=ADMIN)
    assert r.json()["items"] == []
    resumed, _ = await gw.gateway.authority.events(type="subject_resumed")
    assert [(e.subject, e.actor) for e in resumed] == [("alice", "admin:bootstrap")]


async def test_self_callers_may_not_suspend_or_resume_any_subject(start_gateway, http):
    gw = await start(start_gateway)
    me = await create(http, gw, "alice", "self", ["authgate:self", "read"])
    other = await create(http, gw, "bob", "admin", ["authgate:admin"])
    for subject in ("alice", "bob"):
        for action in ("suspend", "resume"):
            r = await http.post(f"{gw.admin}/v1/subjects/{subject}/{action}",
                                headers=bearer(me["token"]))
            assert r.status_code == 403 and r.json()["error"] == "insufficient_scope"
    for path in ("/v1/subjects/suspended", "/v1/subjects/alice/suspension"):
        assert (await http.get(f"{gw.admin}{path}", headers=bearer(me["token"]))).status_code \
            == 403
    assert (await http.post(f"{gw.admin}/v1/subjects/alice/suspend")).status_code == 401
    assert (await http.get(f"{gw.proxy}/echo", headers=bearer(me["token"]))).status_code == 200
    # an admin token may (and so may suspend the subject behind a self token)
    r = await http.post(f"{gw.admin}/v1/subjects/alice/suspend", headers=bearer(other["token"]))
    assert r.status_code == 200 and r.json()["actor"] == f"admin:{other['id']}"
    assert (await http.get(f"{gw.proxy}/echo", headers=bearer(me["token"]))).status_code == 401


async def test_bad_input_is_refused_and_changes_nothing(start_gateway, http):
    gw = await start(start_gateway)
    url = f"{gw.admin}/v1/subjects"
    cases = [
        (f"{url}/alice/suspend", {"reason": "x", "extra": 1}, 422, "extra"),
        (f"{url}/alice/suspend", {"reason": ""}, 422, "reason"),
        (f"{url}/alice/suspend", {"reason": "r" * 501}, 422, "reason"),
        (f"{url}/alice/suspend", {"reason": 5}, 422, "reason"),
        (f"{url}/alice/suspend", [1], 422, "body"),
        (f"{url}/{'x' * 201}/suspend", None, 422, "subject"),
        (f"{url}/{quote('a' + chr(1) + 'b')}/suspend", None, 422, "subject"),
        (f"{url}/%20/suspend", None, 422, "subject"),
        (f"{url}/alice/resume", {"why": "x"}, 422, "why"),
    ]
    for target, body, status, field in cases:
        r = await http.post(target, headers=ADMIN, json=body)
        assert r.status_code == status, (target, body, r.text)
        assert r.json()["error"] == "invalid_request" and field in r.json()["error_description"]
    r = await http.post(f"{url}/alice/suspend", headers={**ADMIN, "content-type":
                                                          "application/json"}, content=b"{")
    assert r.status_code == 400
    r = await http.get(f"{url}/suspended?limit=0", headers=ADMIN)
    assert r.status_code == 422
    r = await http.get(f"{url}/suspended?cursor=garbage", headers=ADMIN)
    assert r.status_code == 422 and "cursor" in r.json()["error_description"]
    r = await http.get(f"{url}/suspended?suspended=false", headers=ADMIN)
    assert r.status_code == 422  # unknown query parameters are refused
    assert (await http.get(f"{url}/suspended", headers=ADMIN)).json()["items"] == []
    events, _ = await gw.gateway.authority.events(type="subject_suspended")
    assert events == []

    # non-ASCII subjects are subjects like any other, and a 200-character one fits
    for subject in ("Łukasz", "x" * 200):
        t = await create(http, gw, subject)
        r = await http.post(f"{url}/{quote(subject)}/suspend", headers=ADMIN)
        assert r.status_code == 200 and r.json()["subject"] == subject
        r = await http.get(f"{gw.proxy}/echo", headers=bearer(t["token"]))
        assert r.status_code == 401


async def test_the_creation_limit_answers_429_for_every_caller(start_gateway, http):
    gw = await start(start_gateway, creation_limit="3/hour")
    me = await create(http, gw, "alice", "self", ["authgate:self", "read"])
    await create(http, gw, "alice", "two")
    mine = await create(http, gw, "alice", "three", headers=bearer(me["token"]))
    for headers in (ADMIN, bearer(me["token"])):
        r = await http.post(f"{gw.admin}/v1/tokens", headers=headers,
                            json={"subject": "alice", "name": "four", "scopes": ["read"]})
        assert r.status_code == 429, r.text
        assert r.json()["error"] == "rate_limited"
        assert "creation_limit" in r.json()["error_description"]
        assert 3500 <= int(r.headers["retry-after"]) <= 3600
    await create(http, gw, "bob")  # another subject has its own count
    # a rotation creates a token (its successor): with a grace, uncounted rotations would
    # leave the subject ever more working tokens, so it is refused the same way
    for headers in (bearer(me["token"]), ADMIN):
        r = await http.post(f"{gw.admin}/v1/tokens/{mine['id']}/rotate", headers=headers,
                            json={"grace_s": 86400})
        assert r.status_code == 429, r.text
        assert r.json()["error"] == "rate_limited"
        assert "creation_limit" in r.json()["error_description"]
        assert 3500 <= int(r.headers["retry-after"]) <= 3600
    events, _ = await gw.gateway.authority.events(type="rate_limited")
    limited = {"reason": "creation_limit", "limit": "3/hour"}
    assert [(e.subject, e.actor, dict(e.details)) for e in events] == [
        ("alice", "admin:bootstrap", limited), ("alice", f"self:{me['id']}", limited),
        ("alice", f"self:{me['id']}", limited), ("alice", "admin:bootstrap", limited)]
    r = await http.get(f"{gw.admin}/v1/tokens?subject=alice", headers=ADMIN)
    items = r.json()["items"]
    assert len(items) == 3 and all(t["status"] == "active" for t in items)


async def test_concurrent_creates_over_the_api_stop_exactly_at_the_limit(start_gateway, http):
    gw = await start(start_gateway, creation_limit="5/minute")
    results = await asyncio.gather(*(
        http.post(f"{gw.admin}/v1/tokens", headers=ADMIN,
                  json={"subject": "alice", "name": f"n{i}"}) for i in range(20)))
    assert sorted(r.status_code for r in results) == [201] * 5 + [429] * 15


# --- the CLI ---------------------------------------------------------------------------------


def test_cli_suspend_resume_list_and_the_creation_limit(store_url, store):
    authgate("tokens", "create", "--subject", "alice", "--name", "n", store=store_url)
    out = authgate("subjects", "suspend", "alice", "--reason", "audit", store=store_url)
    assert out.stdout.strip() == "suspended alice"
    out = authgate("subjects", "suspend", "alice", "--json", store=store_url)
    assert '"reason": "audit"' in out.stdout and '"suspended": true' in out.stdout
    out = authgate("subjects", "list", store=store_url)
    assert out.stdout.startswith("alice\t") and out.stdout.rstrip().endswith("audit")
    assert authgate("subjects", "resume", "alice", store=store_url).stdout.strip() \
        == "resumed alice"
    assert authgate("subjects", "resume", "alice", store=store_url).stdout.strip() \
        == "alice was not suspended"
    assert authgate("subjects", "list", "--json", store=store_url).stdout.strip() == "[]"
    bad = authgate("subjects", "suspend", "x" * 201, store=store_url, check=2)
    assert "'SUBJECT'" in bad.stderr.splitlines()[-1]
    assert "at most 200 characters" in bad.stderr.splitlines()[-1]
    authgate("subjects", "resume", "a\tb", store=store_url, check=2)
    authgate("subjects", "suspend", "s", "--reason", "r" * 501, store=store_url, check=2)
    authgate("subjects", "suspend", store=store_url, check=2)

    env = {"AUTHGATE_CREATION_LIMIT": "1/day"}
    first = json.loads(authgate("tokens", "create", "--subject", "bob", "--name", "n", "--json",
                                store=store_url, env=env).stdout)["id"]
    refused = authgate("tokens", "create", "--subject", "bob", "--name", "n", store=store_url,
                       env=env, check=1)
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1 and "creation_limit" in lines[0] and "retry in" in lines[0]
    assert refused.stdout == ""
    refused = authgate("tokens", "rotate", first, "--grace", "24h", store=store_url,
                       env=env, check=1)  # a rotation is a creation too
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1 and "creation_limit" in lines[0] and refused.stdout == ""
    bad = authgate("tokens", "create", "--subject", "bob", "--name", "n", store=store_url,
                   env={"AUTHGATE_CREATION_LIMIT": "5/fortnight"}, check=1)
    assert "creation_limit" in bad.stderr


# --- the bound, on two replicas ---------------------------------------------------------------


async def measure(http: httpx.AsyncClient, replicas: list[RunningGateway], secret: str,
                  want: int, event_type: str, write: Any) -> float:
    """Probe every replica (~100 times a second each) while ``write`` runs; return the seconds
    from the change's commit (its event's time) until every replica answered ``want`` for
    good. Fails unless each replica answered the other status first and ``want`` at the end."""
    stop, seen = asyncio.Event(), []

    async def probe() -> None:
        deadline = time.monotonic() + 60
        while not stop.is_set() and time.monotonic() < deadline:
            for i, rg in enumerate(replicas):
                sent = time.time()
                r = await http.get(f"{rg.proxy}/echo", headers=bearer(secret))
                seen.append((i, sent, r.status_code))
            await asyncio.sleep(0.01)

    probing = asyncio.create_task(probe())
    await asyncio.sleep(0.05)
    await write()
    events, _ = await replicas[0].gateway.authority.events(type=event_type, limit=1)
    changed_at = events[0].at.timestamp()
    while time.time() < changed_at + BOUND_S + 0.5 and not probing.done():
        await asyncio.sleep(0.05)
    stop.set()
    await probing
    worst = 0.0
    for i in range(len(replicas)):
        mine = [(sent, status) for j, sent, status in seen if j == i]
        assert mine[0][1] != want and mine[-1][1] == want, (i, mine[0], mine[-1])
        last_other = max(sent for sent, status in mine if status != want)
        worst = max(worst, last_other - changed_at)
    return max(worst, 0.0)


def cli(*args: str, store_url: str, cache: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUTHGATE_")} | {
        "AUTHGATE_STORE": store_url, "AUTHGATE_CACHE": cache, "AUTHGATE_PEPPER": PEPPER}
    proc = subprocess.run([sys.executable, "-m", "gateway", *args], env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("backend_pair", ["postgresql+redis"], indirect=True)
async def test_suspension_reaches_every_replica_within_the_bound(start_gateway, http,
                                                                 backend_pair):
    store_url, cache_url = backend_pair
    a, b = await start(start_gateway), await start(start_gateway)
    t = await create(http, a, "alice")
    for rg in (a, b):  # A reads the store and fills Redis, B takes A's copy
        assert (await http.get(f"{rg.proxy}/echo", headers=bearer(t["token"]))).status_code == 200

    async def api_suspend() -> None:
        r = await http.post(f"{a.admin}/v1/subjects/alice/suspend", headers=ADMIN)
        assert r.status_code == 200

    # through replica A's API: broadcast, so B refuses within milliseconds
    delay = await measure(http, [b, a], t["token"], 401, "subject_suspended", api_suspend)
    print(f"suspension via A's API seen on every replica after {delay * 1000:.0f} ms")
    assert delay < 0.5

    # resume by the CLI with a memory:// cache (nothing broadcast): within the bound
    delay = await measure(http, [a, b], t["token"], 200, "subject_resumed", lambda: (
        asyncio.to_thread(cli, "subjects", "resume", "alice", store_url=store_url,
                          cache="memory://")))
    print(f"resume via the CLI (memory://) seen on every replica after {delay * 1000:.0f} ms")
    assert delay <= BOUND_S

    # suspend by the CLI with the shared Redis: broadcast
    delay = await measure(http, [a, b], t["token"], 401, "subject_suspended", lambda: (
        asyncio.to_thread(cli, "subjects", "suspend", "alice", store_url=store_url,
                          cache=cache_url)))
    print(f"suspension via the CLI (redis) seen on every replica after {delay * 1000:.0f} ms")
    assert delay < 0.5


# --- subjects with a slash, over raw HTTP (httpx would normalise the path) -------------------


def raw(base: str, method: str, path: str, headers: dict[str, str],
        body: str | None = None) -> tuple[int, Any]:
    """One request with ``path`` sent byte for byte (``%2F`` stays ``%2F``)."""
    import http.client
    import json as json_
    from urllib.parse import urlsplit

    url = urlsplit(base)
    conn = http.client.HTTPConnection(url.hostname or "127.0.0.1", url.port, timeout=30)
    try:
        hdrs = {**headers, "Content-Type": "application/json"} if body is not None else headers
        conn.request(method, path, body=body, headers=hdrs)
        resp = conn.getresponse()
        data = resp.read()
        return resp.status, json_.loads(data) if data else None
    finally:
        conn.close()


async def test_a_subject_with_a_slash_can_be_suspended_resumed_read_and_revoked(
        start_gateway, http):
    gw = await start(start_gateway)
    carol = await create(http, gw, "team/carol")
    me = await create(http, gw, "team/carol", "self", ["authgate:self", "read"])
    other = await create(http, gw, "team/dave", "self", ["authgate:self", "read"])

    async def call(method: str, path: str, headers: dict[str, str] = ADMIN,
                   body: str | None = None) -> tuple[int, Any]:
        return await asyncio.to_thread(raw, gw.admin, method, path, headers, body)

    for spelling in ("team%2Fcarol", "team/carol", "team%2fcarol"):
        status, body = await call("POST", f"/v1/subjects/{spelling}/suspend", body="{}")
        assert status == 200 and body["subject"] == "team/carol" and body["suspended"], body
        r = await http.get(f"{gw.proxy}/echo", headers=bearer(carol["token"]))
        assert r.status_code == 401
        status, body = await call("GET", f"/v1/subjects/{spelling}/suspension")
        assert status == 200 and body["suspended"] and body["subject"] == "team/carol"
        # the list still routes to the list, and shows the subject
        status, body = await call("GET", "/v1/subjects/suspended")
        assert status == 200 and [s["subject"] for s in body["items"]] == ["team/carol"]
        status, body = await call("POST", f"/v1/subjects/{spelling}/resume")
        assert status == 200 and not body["suspended"] and body["subject"] == "team/carol"
        status, body = await call("GET", f"/v1/subjects/{spelling}/suspension")
        assert status == 200 and not body["suspended"]
    # a subject named like the list's path segment is a subject like any other
    status, body = await call("GET", "/v1/subjects/suspended/suspension")
    assert status == 200 and body["subject"] == "suspended" and not body["suspended"]

    # self callers: still 403 for suspension (their own subject too), and only their own
    # subject's bulk revoke
    for path in ("/v1/subjects/team%2Fcarol/suspend", "/v1/subjects/team/carol/resume"):
        status, body = await call("POST", path, bearer(me["token"]))
        assert status == 403, body
    status, _ = await call("GET", "/v1/subjects/team%2Fcarol/suspension", bearer(me["token"]))
    assert status == 403
    status, _ = await call("GET", "/v1/subjects/suspended", bearer(me["token"]))
    assert status == 403
    status, body = await call("POST", "/v1/subjects/team%2Fcarol/revoke", bearer(other["token"]))
    assert status == 403, body
    status, body = await call("POST", "/v1/subjects/team%2Fcarol/revoke", body="{}")
    assert status == 200 and body == {"revoked": 2}, body
    r = await http.get(f"{gw.proxy}/echo", headers=bearer(carol["token"]))
    assert r.status_code == 401
    r = await http.get(f"{gw.proxy}/echo", headers=bearer(other["token"]))
    assert r.status_code == 200  # team/dave untouched
    status, body = await call("POST", "/v1/subjects/team/dave/revoke", bearer(other["token"]))
    assert status == 200 and body == {"revoked": 1}, body
    # an empty subject is bad input, not a route to something else
    status, body = await call("POST", "/v1/subjects//suspend")
    assert status == 422 and body["error"] == "invalid_request", (status, body)


# --- a suspension that matches no token shows it (subjects are exact strings) ----------------


async def test_suspend_and_resume_answer_how_many_tokens_have_exactly_the_subject(
        start_gateway, http):
    import unicodedata
    gw = await start(start_gateway)
    nfc, nfd = (unicodedata.normalize(f, "josé") for f in ("NFC", "NFD"))
    await create(http, gw, nfc)
    await create(http, gw, nfc, "two")
    gone = await create(http, gw, nfc, "gone")
    r = await http.post(f"{gw.admin}/v1/tokens/{gone['id']}/revoke", headers=ADMIN)
    assert r.status_code == 200
    url = f"{gw.admin}/v1/subjects"
    for subject, tokens in ((nfc, 2), (nfd, 0), ("José", 0), (nfc + " ", 0), ("nobody", 0)):
        r = await http.post(f"{url}/{quote(subject)}/suspend", headers=ADMIN)
        assert r.status_code == 200 and r.json()["subject"] == subject
        assert r.json()["tokens"] == tokens and r.json()["suspended"], (subject, r.json())
        r = await http.post(f"{url}/{quote(subject)}/resume", headers=ADMIN)
        assert r.status_code == 200 and r.json()["tokens"] == tokens and not r.json()["suspended"]
    r = await http.get(f"{url}/{quote(nfc)}/suspension", headers=ADMIN)
    assert "tokens" not in r.json()  # the state read is unchanged


def test_cli_suspend_json_answers_the_token_count(store_url, store):
    authgate("tokens", "create", "--subject", "alice", "--name", "n", store=store_url)
    out = json.loads(authgate("subjects", "suspend", "alice", "--json", store=store_url).stdout)
    assert out["tokens"] == 1 and out["suspended"] is True
    out = json.loads(authgate("subjects", "resume", "alice", "--json", store=store_url).stdout)
    assert out["tokens"] == 1 and out["suspended"] is False
    out = json.loads(authgate("subjects", "suspend", "Alice", "--json", store=store_url).stdout)
    assert out["tokens"] == 0
    text = authgate("subjects", "suspend", "alice ", store=store_url)
    assert text.stdout.strip() == "suspended alice"
    assert "no working token has exactly the subject 'alice '" in text.stderr
    quiet = authgate("subjects", "suspend", "alice", store=store_url)
    assert quiet.stderr == ""

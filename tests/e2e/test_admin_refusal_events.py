"""Refusals on the admin API are audit events too (SPEC §8), as on the proxy: a 401 without a
credential is ``auth_failed`` (reason ``missing``), a 403 is ``access_denied`` naming the caller."""

from __future__ import annotations

BOOT = "bootstrap-admin-secret-0123456789"
ADMIN = {"Authorization": f"Bearer {BOOT}"}


async def test_admin_api_refusals_are_events(start_gateway, http):
    gw = await start_gateway(admin_token=BOOT)
    made = {}
    for name, scopes in (("reader", ["read"]), ("self", ["authgate:self", "read"])):
        r = await http.post(f"{gw.admin}/v1/tokens", headers=ADMIN,
                            json={"subject": "alice", "name": name, "scopes": scopes})
        assert r.status_code == 201
        made[name] = r.json()

    assert (await http.get(f"{gw.admin}/v1/tokens")).status_code == 401
    r = await http.get(f"{gw.admin}/v1/tokens",
                       headers={"Authorization": f"Bearer {made['reader']['token']}"})
    assert r.status_code == 403
    r = await http.post(f"{gw.admin}/v1/tokens",
                        headers={"Authorization": f"Bearer {made['self']['token']}"},
                        json={"subject": "alice", "name": "wider", "scopes": ["write"]})
    assert r.status_code == 403

    await gw.gateway.usage.flush()
    failed, _ = await gw.gateway.authority.events(type="auth_failed")
    assert [(e.details["reason"], e.token_id) for e in failed] == [("missing", None)]
    denied, _ = await gw.gateway.authority.events(type="access_denied")
    seen = {(e.token_id, e.actor, e.subject) for e in denied}
    assert seen == {(made["reader"]["id"], "gateway", "alice"),
                    (made["self"]["id"], f"self:{made['self']['id']}", "alice")}
    assert all(e.ip == "127.0.0.1" for e in denied)

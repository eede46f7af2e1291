"""Review finding: a self-service token mints (or re-limits) a token with a far larger burst.

``access._within`` compares rate limits by their long-run average only (limit / window_s), but
SPEC §3 limits admit a burst of N at once. A self token limited to 5/minute may create a token
limited to {"limit": 500, "window_s": 86400}: 0.0058/s "slower" on average, yet it sends 500
requests in a row, 100x what the caller itself may send in any minute. SPEC §7: never a token
"that has a higher rate limit than its own (403 naming the field)".
"""

from __future__ import annotations

import pytest

BOOT = "bootstrap-admin-secret-0123456789"
ADMIN = {"Authorization": f"Bearer {BOOT}"}


async def _self_token(http, gw) -> dict:
    r = await http.post(f"{gw.admin}/v1/tokens", headers=ADMIN, json={
        "subject": "alice", "name": "me", "scopes": ["authgate:self", "read"],
        "expires_in": "1d", "rate_limit": "5/minute"})
    assert r.status_code == 201, r.text
    return r.json()


async def test_self_cannot_create_a_token_with_a_bigger_burst(start_gateway, http):
    gw = await start_gateway(admin_token=BOOT, default_rate_limit="1000/minute",
                             failed_auth_limit=None)
    me = await _self_token(http, gw)
    r = await http.post(f"{gw.admin}/v1/tokens", headers={"Authorization": f"Bearer {me['token']}"},
                        json={"subject": "alice", "name": "child", "scopes": ["read"],
                              "expires_in": "1h",
                              "rate_limit": {"limit": 500, "window_s": 86400}})
    if r.status_code == 201:
        child = r.json()["token"]
        admitted = 0
        for _ in range(20):  # bounded: 4x the caller's own burst
            p = await http.get(f"{gw.proxy}/echo", headers={"Authorization": f"Bearer {child}"})
            admitted += p.status_code == 200
        pytest.fail(f"created; the child sent {admitted} of 20 requests at once, the caller "
                    f"may send 5 a minute")
    assert r.status_code == 403 and "rate_limit" in r.json()["error_description"], r.text


async def test_self_cannot_patch_itself_to_a_bigger_burst(start_gateway, http):
    gw = await start_gateway(admin_token=BOOT, default_rate_limit="1000/minute",
                             failed_auth_limit=None)
    me = await _self_token(http, gw)
    r = await http.post(f"{gw.admin}/v1/tokens", headers={"Authorization": f"Bearer {me['token']}"},
                        json={"subject": "alice", "name": "sibling", "scopes": ["read"],
                              "expires_in": "1h", "rate_limit": "5/minute"})
    assert r.status_code == 201, r.text
    r = await http.patch(f"{gw.admin}/v1/tokens/{r.json()['id']}",
                         headers={"Authorization": f"Bearer {me['token']}"},
                         json={"rate_limit": {"limit": 500, "window_s": 86400}})
    assert r.status_code == 403 and "rate_limit" in r.json()["error_description"], r.text

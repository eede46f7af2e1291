"""deploy/nginx/authgate.conf for real: Debian's nginx + authgate + an app, all on loopback."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from gateway.authority import Actor
from tests.e2e.conftest import free_port

RECIPE = Path(__file__).resolve().parents[2] / "deploy" / "nginx" / "authgate.conf"


def nginx_binary() -> str:
    found = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx")
                                      else None)
    if found is None and os.geteuid() == 0:  # the test installs what it needs (Debian)
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env, capture_output=True)
        subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", "nginx"],
                       check=True, env=env, capture_output=True)
        found = shutil.which("nginx") or "/usr/sbin/nginx"
    if found is None:
        pytest.fail("nginx is needed: apt-get install nginx")
    return found


@pytest.mark.parametrize("backend_pair", ["sqlite+memory"], indirect=True)
async def test_nginx_auth_request_recipe(start_gateway, upstream, http, tmp_path):
    nginx = await asyncio.to_thread(nginx_binary)
    rg = await start_gateway(routes=[{"path": "/admin/*", "scopes": ["admin"]}])
    port = free_port()
    recipe = (RECIPE.read_text()
              .replace("127.0.0.1:8081", rg.admin.removeprefix("http://"))
              .replace("127.0.0.1:9000", upstream.removeprefix("http://"))
              .replace("listen 8000;", f"listen 127.0.0.1:{port};"))
    (tmp_path / "recipe.conf").write_text(recipe)
    (tmp_path / "nginx.conf").write_text(f"""
daemon off;
master_process off;
pid {tmp_path}/nginx.pid;
error_log {tmp_path}/error.log warn;
events {{ worker_connections 256; }}
http {{
    access_log off;
    client_body_temp_path {tmp_path}/body;
    proxy_temp_path {tmp_path}/proxy;
    fastcgi_temp_path {tmp_path}/fastcgi;
    uwsgi_temp_path {tmp_path}/uwsgi;
    scgi_temp_path {tmp_path}/scgi;
    include {tmp_path}/recipe.conf;
}}
""")
    proc = await asyncio.create_subprocess_exec(nginx, "-p", str(tmp_path), "-c",
                                                str(tmp_path / "nginx.conf"),
                                                stderr=asyncio.subprocess.PIPE)
    try:
        url = f"http://127.0.0.1:{port}"
        for _ in range(100):
            try:
                await http.get(url)
                break
            except Exception:
                await asyncio.sleep(0.05)
        _, secret = await rg.gateway.authority.create(Actor("cli:test"), subject="alice",
                                                      name="ci", scopes=["read"])
        r = await http.get(f"{url}/echo?x=1", headers={"Authorization": f"Bearer {secret}",
                                                       "X-Auth-Subject": "mallory"})
        assert r.status_code == 200, (r.status_code, r.text)
        sent = {}
        for k, v in r.json()["headers"]:
            sent.setdefault(k.lower(), []).append(v)
        assert sent["x-auth-subject"] == ["alice"]  # authgate's answer, not the client's
        assert sent["x-auth-token-name"] == ["ci"] and sent["x-auth-scopes"] == ["read"]
        assert "authorization" not in sent
        assert r.headers["x-ratelimit-remaining"].isdigit()

        r = await http.get(f"{url}/echo")
        assert r.status_code == 401
        assert r.headers["www-authenticate"] == 'Bearer realm="authgate"'
        r = await http.get(f"{url}/echo", headers={"Authorization": "Bearer agt_garbage"})
        assert r.status_code == 401
        r = await http.get(f"{url}/admin/x", headers={"Authorization": f"Bearer {secret}"})
        assert r.status_code == 403  # the route's scope, judged on the original URI
    finally:
        proc.terminate()
        await proc.wait()

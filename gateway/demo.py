"""``authgate demo``: the whole product in one command, on the embedded defaults."""

from __future__ import annotations

import asyncio
import json
import tempfile
from pathlib import Path

import click
import uvicorn

from gateway.app import Gateway
from gateway.authority import Actor
from gateway.config import load_settings
from gateway.proxy import Receive, Scope, Send
from gateway.server import run


async def echo_app(scope: Scope, receive: Receive, send: Send) -> None:
    """Answers with what it was sent: method, path and the headers the gateway injected."""
    if scope["type"] != "http":
        return
    body = json.dumps({
        "method": scope["method"], "path": scope["path"],
        "headers": {k.decode(): v.decode("latin-1") for k, v in scope["headers"]},
    }, indent=2).encode() + b"\n"
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": body})


def run_demo(port: int) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="authgate-demo-"))
    settings = load_settings(env={}, flags={
        "store": f"sqlite:///{workdir}/authgate.db", "upstream": f"http://127.0.0.1:{port + 2}",
        "listen": f"127.0.0.1:{port}", "admin_listen": f"127.0.0.1:{port + 1}"})
    upstream = uvicorn.Server(uvicorn.Config(echo_app, host="127.0.0.1", port=port + 2,
                                             log_level="warning", lifespan="off",
                                             interface="asgi3"))

    async def ready(gateway: Gateway) -> None:
        asyncio.get_running_loop().create_task(upstream.serve())
        _, secret = await gateway.authority.create(
            Actor("cli:demo"), subject="demo-user", name="demo", scopes=["read"])
        _, admin = await gateway.authority.create(
            Actor("cli:demo"), subject="demo-admin", name="demo admin", scopes=["authgate:admin"])
        click.echo(f"echo upstream  http://127.0.0.1:{port + 2}")
        click.echo(f"gateway        http://127.0.0.1:{port}  (admin http://127.0.0.1:{port + 1})")
        click.echo(f"store          {settings.store}\n")
        click.echo("Try it (the upstream echoes the identity headers the gateway added):\n")
        click.echo(f"  curl -s -H 'Authorization: Bearer {secret}' http://127.0.0.1:{port}/hello\n")
        click.echo(f"Without the token you get a 401:  curl -i http://127.0.0.1:{port}/hello\n")
        click.echo(f"Admin page: http://127.0.0.1:{port + 1}/admin  sign in with: {admin}")
        click.echo("Ctrl-C stops everything.")

    run(settings, ready)
    upstream.should_exit = True

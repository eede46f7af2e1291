"""The examples/ apps as a user runs them (uvicorn, their authgate.yaml, AUTHGATE_* overrides)."""

from __future__ import annotations

import asyncio
import importlib.util
from pathlib import Path

import httpx
import pytest
import uvicorn

from gateway.authority import Actor
from gateway.config import load_settings
from gateway.services import Services
from tests.e2e.conftest import free_port

EXAMPLES = Path(__file__).parents[2] / "examples"


@pytest.mark.parametrize("name", ["fastapi_app", "starlette_app"])
async def test_example_app(name, tmp_path, monkeypatch):
    monkeypatch.setenv("AUTHGATE_STORE", f"sqlite:///{tmp_path}/example.db")
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(module.app, host="127.0.0.1", port=port,
                                           lifespan="on", log_level="warning"))
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.01)
    settings = load_settings(str(EXAMPLES / "authgate.yaml"))
    try:
        async with Services.opened(settings) as services:
            _, secret = await services.authority.create(Actor("cli:test"), subject="alice",
                                                        name="laptop", scopes=["reports:read"])
        url, auth = f"http://127.0.0.1:{port}", {"Authorization": f"Bearer {secret}"}
        async with httpx.AsyncClient() as http:
            assert (await http.get(f"{url}/health")).status_code == 200
            if name == "fastapi_app":
                assert (await http.get(f"{url}/reports/q1")).status_code == 401
                r = await http.get(f"{url}/reports/q1", headers=auth)
                assert r.json() == {"report": "q1", "for": "alice", "token": "laptop"}
                r = await http.delete(f"{url}/reports/q1", headers=auth)
                assert r.status_code == 403 and r.json()["error"] == "insufficient_scope"
            else:
                r = await http.get(f"{url}/whoami", headers=auth)
                assert r.json() == {"subject": "alice", "scopes": ["reports:read"]}
    finally:
        server.should_exit = True
        await task

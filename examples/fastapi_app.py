"""A FastAPI app behind authgate, in process.  Run:  uvicorn examples.fastapi_app:app

    curl -H "Authorization: Bearer agt_..." http://127.0.0.1:8000/reports/q1
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Request

from gateway import AuthGateMiddleware
from gateway.fastapi import Auth, requires_scopes

app = FastAPI()
app.add_middleware(AuthGateMiddleware, config=str(Path(__file__).with_name("authgate.yaml")))


@app.get("/health")  # `auth: none` in the config: request.state.auth is None
async def health() -> dict[str, str]:
    return {"status": "ok"}


@app.get("/reports/{name}")  # the config's route already demands reports:read
async def report(name: str, request: Request) -> dict[str, Any]:
    auth: Auth = request.state.auth
    return {"report": name, "for": auth.subject, "token": auth.token_name}


@app.delete("/reports/{name}")  # a finer scope for one endpoint: 403 insufficient_scope
async def delete_report(
        name: str, auth: Annotated[Auth, Depends(requires_scopes("reports:write"))],
) -> dict[str, str]:
    return {"deleted": name, "by": auth.subject}

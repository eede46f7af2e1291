"""The admin listener: admin JSON API, introspection, forward auth, health, metrics, the page.

    deps.py     what the routes share: the services they use, as FastAPI dependencies
    api.py      /v1/tokens, /v1/events, /v1/stats, /v1/introspect, bulk revocation
    alerts.py   /v1/alerts, /v1/alerts/test (SPEC §12)
    access.py   who the caller is (admin, self-service, bootstrap) and what it may touch
    ops.py      /healthz, /readyz, /metrics, /v1/authorize (forward auth)
    page.py     /admin and its static files (strict CSP)
    dashboard.py /v1/stats/outcomes (the dashboard's chart); expiry.py: /v1/tokens?expires_before
    models.py   request/response models: the source of /openapi.json
    errors.py   every error as {"error", "error_description"} (gateway.responses)
    guard.py    body size limit and cross-site refusal (ASGI middleware)
    export.py   CSV export
    subjects.py /v1/subjects/{subject:path}/suspend|resume|suspension, /v1/subjects/suspended
"""

from __future__ import annotations

from fastapi import FastAPI

from gateway.admin import alerts, api, dashboard, errors, ops, page
from gateway.admin import subjects as admin_subjects
from gateway.admin.deps import AdminServices
from gateway.admin.guard import AdminGuard


def build_admin_app(services: AdminServices | None) -> FastAPI:
    """The admin app on ``services`` (None: only for reading the OpenAPI document)."""
    app = FastAPI(title="authgate admin API", version="1", docs_url=None, redoc_url=None,
                  openapi_url="/openapi.json",
                  description="Token authority, introspection and forward-auth decisions. "
                              "Authenticate with `Authorization: Bearer <token>`: a token with "
                              "scope authgate:admin, or authgate:self for its own subject, "
                              "or the bootstrap admin_token.")
    app.state.services = services
    errors.install(app)
    app.include_router(ops.router)
    app.include_router(api.router)
    app.include_router(alerts.router)
    app.include_router(page.router)
    app.include_router(dashboard.router)
    admin_subjects.install(app)  # suspension routes, the creation limit's 429
    app.add_middleware(AdminGuard)
    return app

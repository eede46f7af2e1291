"""What the admin routes share: the services they use, as FastAPI dependencies.

The admin app is built on any object with the attributes of ``AdminServices`` (the gateway's
``Services`` is one); each route asks only for the piece it uses (``AuthorityDep``,
``PipelineDep``, ...), never for the whole. The object sits on ``app.state.services``.
"""

from __future__ import annotations

from typing import Annotated, Protocol

from fastapi import Depends, Request

from gateway.authority import TokenAuthority
from gateway.cache import SharedCache
from gateway.config import Settings
from gateway.metrics import Metrics
from gateway.pipeline import Pipeline
from gateway.store import TokenRecord, TokenStore
from gateway.usage import UsageRecorder


class Signer(Protocol):
    """What the admin listener uses of ``gateway.assertion.Assertions`` (not imported here:
    PyNaCl is loaded only when identity_assertion is configured)."""

    def sign(self, record: TokenRecord, request_id: bytes) -> str: ...
    def jwks(self) -> bytes: ...


class AdminServices(Protocol):
    """The services the admin listener uses."""

    @property
    def settings(self) -> Settings: ...
    @property
    def store(self) -> TokenStore: ...
    @property
    def shared(self) -> SharedCache: ...
    @property
    def authority(self) -> TokenAuthority: ...
    @property
    def pipeline(self) -> Pipeline: ...
    @property
    def usage(self) -> UsageRecorder: ...
    @property
    def metrics(self) -> Metrics: ...
    @property
    def assertions(self) -> Signer | None: ...


def services_of(request: Request) -> AdminServices:
    services: AdminServices = request.app.state.services
    return services


def settings(request: Request) -> Settings:
    return services_of(request).settings


def store(request: Request) -> TokenStore:
    return services_of(request).store


def shared(request: Request) -> SharedCache:
    return services_of(request).shared


def authority(request: Request) -> TokenAuthority:
    return services_of(request).authority


def pipeline(request: Request) -> Pipeline:
    return services_of(request).pipeline


def usage(request: Request) -> UsageRecorder:
    return services_of(request).usage


def metrics(request: Request) -> Metrics:
    return services_of(request).metrics


def assertions(request: Request) -> Signer | None:
    return services_of(request).assertions


SettingsDep = Annotated[Settings, Depends(settings)]
StoreDep = Annotated[TokenStore, Depends(store)]
SharedDep = Annotated[SharedCache, Depends(shared)]
AuthorityDep = Annotated[TokenAuthority, Depends(authority)]
PipelineDep = Annotated[Pipeline, Depends(pipeline)]
UsageDep = Annotated[UsageRecorder, Depends(usage)]
MetricsDep = Annotated[Metrics, Depends(metrics)]
AssertionsDep = Annotated[Signer | None, Depends(assertions)]

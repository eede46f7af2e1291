"""The open-WebSocket watch (gateway.ws_watch) over real services (SQLite + memory): a sweep
ends the connections of a token that became unusable (1008), of a token that lost the route's
scope (1008), of a token it cannot re-read (1013), and of a stalled upstream write (1001);
it leaves the others open. Also the relay's close-code rules (gateway.websocket)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from gateway import ws_watch
from gateway.authority import Actor
from gateway.config import Settings
from gateway.errors import StoreUnavailable
from gateway.services import Services
from gateway.store import TokenRecord
from gateway.websocket import _reason, _sendable
from gateway.ws_watch import OpenSocket, TokenWatch

ADMIN = Actor("cli:test")


@pytest.fixture
async def services(tmp_path) -> AsyncIterator[Services]:  # type: ignore[no-untyped-def]
    settings = Settings(store=f"sqlite:///{tmp_path}/w.db", pepper="watch", local_cache_ttl_s=5)
    async with Services.opened(settings) as s:
        yield s


async def opened(services: Services, route_scopes: tuple[str, ...] = (), **kw: object
                 ) -> tuple[TokenRecord, OpenSocket]:
    record, _ = await services.authority.create(ADMIN, subject="s", name="n", **kw)  # type: ignore[arg-type]
    future = asyncio.get_running_loop().create_future()
    return record, OpenSocket(record.token_hash, route_scopes, future)


async def test_a_sweep_ends_only_the_connections_of_a_revoked_token(services: Services) -> None:
    watch = TokenWatch(services.pipeline)
    revoked, a = await opened(services)
    _, b = await opened(services)
    twin = OpenSocket(revoked.token_hash, (), asyncio.get_running_loop().create_future())
    for conn in (a, b, twin):
        watch.add(conn)
    await watch.sweep()
    assert not (a.ended.done() or b.ended.done() or twin.ended.done())
    await services.authority.revoke(ADMIN, revoked.id)
    await watch.sweep()
    assert a.ended.result() == (1008, "token no longer valid")
    assert twin.ended.result() == (1008, "token no longer valid")
    assert not b.ended.done()
    await watch.close()


async def test_a_removed_scope_ends_the_route_connections_only(services: Services) -> None:
    watch = TokenWatch(services.pipeline)
    record, needs = await opened(services, ("reports:read",), scopes=["reports:read"])
    plain = OpenSocket(record.token_hash, (), asyncio.get_running_loop().create_future())
    watch.add(needs)
    watch.add(plain)
    await services.authority.update(ADMIN, record.id, scopes=["other"])
    await watch.sweep()
    assert needs.ended.result() == (1008, "token lacks the route's scope")
    assert not plain.ended.done()
    await watch.close()


async def test_a_token_that_cannot_be_reread_ends_with_1013(services: Services,
                                                             monkeypatch) -> None:  # type: ignore[no-untyped-def]
    watch = TokenWatch(services.pipeline)
    _, conn = await opened(services)
    watch.add(conn)
    services.pipeline.cache.local.clear()

    async def down(token_hash: str) -> TokenRecord | None:
        raise StoreUnavailable("down")

    monkeypatch.setattr(services.pipeline.store, "get_by_hash", down)
    await watch.sweep()
    assert conn.ended.result() == (1013, "token cannot be verified now")
    await watch.close()


async def test_a_stalled_upstream_write_ends_the_connection(services: Services,
                                                             monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(ws_watch, "WRITE_STALL_S", 0.05)
    watch = TokenWatch(services.pipeline)
    _, conn = await opened(services)
    watch.add(conn)
    conn.upstream_since = time.monotonic()
    await watch.sweep()
    assert not conn.ended.done()
    await asyncio.sleep(0.1)
    await watch.sweep()
    assert conn.ended.result() == (1001, ws_watch.STALLED)
    await watch.close()


async def test_an_auth_none_connection_is_watched_for_stalls_only(services: Services,
                                                                   monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(ws_watch, "WRITE_STALL_S", 0.05)
    watch = TokenWatch(services.pipeline)
    conn = OpenSocket("", (), asyncio.get_running_loop().create_future())
    watch.add(conn)
    await watch.sweep()
    assert not conn.ended.done()  # no token, nothing to refuse
    conn.upstream_since = time.monotonic() - 1
    await watch.sweep()
    assert conn.ended.result() == (1001, ws_watch.STALLED)
    await watch.close()


async def test_the_watch_runs_only_while_connections_are_open(services: Services,
                                                               monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(ws_watch, "RECHECK_S", 0.02)
    watch = TokenWatch(services.pipeline)
    record, conn = await opened(services)
    watch.add(conn)
    assert len(watch) == 1
    await services.authority.revoke(ADMIN, record.id)
    await asyncio.wait_for(conn.ended, 2)  # the background sweep found it
    watch.discard(conn)
    assert len(watch) == 0
    await asyncio.sleep(0.1)
    assert watch._task is not None and watch._task.done()
    await watch.close()


@pytest.mark.parametrize("code,lost,sent", [
    (1000, 1001, 1000), (4001, 1001, 4001), (1005, 1001, 1000), (None, 1011, 1000),
    (1006, 1001, 1001), (1006, 1011, 1011), (1015, 1011, 1011), (2999, 1001, 1001),
    (1009, 1011, 1009), (1012, 1001, 1012), (5000, 1011, 1011)])
def test_close_codes_that_cannot_be_sent_are_replaced(code: int | None, lost: int,
                                                      sent: int) -> None:
    assert _sendable(code, lost) == sent


def test_close_reasons_fit_a_close_frame() -> None:
    assert _reason(None) == "" and _reason(b"bye") == "bye"
    long = "ł" * 100  # 200 bytes of UTF-8: cut at 123 bytes, on a character boundary
    assert len(_reason(long).encode()) <= 123 and _reason(long) == "ł" * 61


async def test_a_reload_that_tightens_a_route_ends_its_connections(tmp_path) -> None:  # type: ignore[no-untyped-def]
    routes = [{"path": "/open/*", "auth": "none"}, {"path": "/chat/*"}, {"path": "/*"}]
    settings = Settings(store=f"sqlite:///{tmp_path}/r.db", pepper="watch",
                        local_cache_ttl_s=5, routes=routes)  # type: ignore[arg-type]
    async with Services.opened(settings) as services:
        watch = TokenWatch(services.pipeline)
        record, chat = await opened(services, scopes=["read"])
        chat.path = "/chat/room"
        other = OpenSocket(record.token_hash, (), asyncio.get_running_loop().create_future(),
                           path="/else")
        anonymous = OpenSocket("", (), asyncio.get_running_loop().create_future(),
                               path="/open/feed")
        still_open = OpenSocket("", (), asyncio.get_running_loop().create_future(),
                                path="/open/x")
        for conn in (chat, other, anonymous, still_open):
            watch.add(conn)
        await watch.sweep()
        assert not any(c.ended.done() for c in (chat, other, anonymous, still_open))
        services.reload(settings.model_copy(update={"routes": Settings(
            store=settings.store, pepper="watch", routes=[  # type: ignore[arg-type]
                {"path": "/open/x"}, {"path": "/open/*", "auth": "none"},
                {"path": "/chat/*", "scopes": ["chat"]}, {"path": "/*"}]).routes}))
        await watch.sweep()
        assert chat.ended.result() == (1008, "token lacks the route's scope")
        assert still_open.ended.result() == (1008, "route now requires a token")
        assert not other.ended.done() and not anonymous.ended.done()
        await watch.close()

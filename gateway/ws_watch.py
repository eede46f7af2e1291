"""Open WebSocket connections by token: closed (1008) once their token is no longer usable.

    TokenWatch(pipeline)     add / discard an ``OpenSocket``; one task sweeps while any is open
    OpenSocket               one connection: its token hash, its route's scopes, ``ended``

Used by the proxy's relay (``gateway.websocket``) and the in-process middleware alike; imports
nothing of the HTTP clients.

Every ``RECHECK_S`` the watch re-reads each open connection's token through the pipeline's cache
(an in-process hit is a dict lookup, taken without a task; a miss goes to Redis, then the store,
as a request's would, concurrently for all misses) and ends with 1008 the connections of a token
that is now unknown, revoked, expired, rotated out past its grace, otherwise unusable
(``Pipeline._unusable``: suspension too), or that lacks its route's scopes. After a reload
(the pipeline's router replaced) each connection's route is judged again from its raw path
first: one that now needs a token it lacks (was ``auth: none``), or a scope its token lacks,
ends with 1008 too; so does one whose token lost a scope the app demanded for it
(``OpenSocket.demanded``, set by ``gateway.fastapi.requires_scopes``). Cache entries die
within ``local_cache_ttl_s`` of a change (at once on the broadcast), so a connection ends within
the revocation bound (``local_cache_ttl_s`` + 1 s) whichever replica made the change. When the
token cannot be re-read (store unreachable, nothing cached) the connection ends with 1013 (try
again later), as a request would be answered 503. The relay also marks writes to its upstream:
one pending for ``WRITE_STALL_S`` ends the connection (1001).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from gateway import tokens
from gateway.cache import MISS
from gateway.errors import Refusal, StoreUnavailable
from gateway.pipeline import Pipeline
from gateway.routes import Router
from gateway.store import TokenRecord

__all__ = ["POLICY", "RECHECK_S", "SOCKET_STATE", "STALLED", "TRY_AGAIN", "WRITE_STALL_S",
           "OpenSocket", "TokenWatch"]

log = logging.getLogger("authgate.websocket")

RECHECK_S = 0.5  # how often open connections' tokens are re-read (revocation bound: ttl + 1 s)
WRITE_STALL_S = 30.0  # a side that takes nothing we write for this long is cut off
POLICY = 1008  # policy violation: the token may no longer use this connection
TRY_AGAIN = 1013  # try again later: the token cannot be verified now
STALLED = "upstream stalled"  # the reason of a connection ended for a stalled upstream write
SOCKET_STATE = "authgate_socket"  # the middleware's OpenSocket in the app's scope["state"]


@dataclass(eq=False, slots=True)
class OpenSocket:
    """One relayed connection, as the watch sees it."""
    token_hash: str  # "" on an auth: none route (no token to re-read)
    scopes: tuple[str, ...]  # the route's
    ended: asyncio.Future[tuple[int, str]]
    upstream_since: float = 0.0  # monotonic start of a pending write to the upstream; 0: none
    bytes_in: int = 0  # message bytes relayed client -> upstream (the access log's)
    bytes_out: int = 0  # message bytes relayed upstream -> client
    counted: bool = False  # text bytes are counted (the access log is on)
    path: str = ""  # the raw path of the upgrade: its route is judged again after a reload
    demanded: tuple[str, ...] = ()  # scopes the app demanded (gateway.fastapi.requires_scopes)

    def end(self, code: int, reason: str) -> None:
        if not self.ended.done():
            self.ended.set_result((code, reason))


class TokenWatch:
    """Open connections by token hash; one task re-reads each token every ``RECHECK_S`` while
    any is open (none runs otherwise), and ends connections whose token is no longer usable or
    whose upstream writes stalled."""

    def __init__(self, pipeline: Pipeline) -> None:
        self._pipeline = pipeline
        self._open: dict[str, set[OpenSocket]] = {}
        self._task: asyncio.Task[None] | None = None
        self._router: Router | None = None  # the router the open connections were judged under

    def __len__(self) -> int:
        return sum(len(s) for s in self._open.values())

    def add(self, conn: OpenSocket) -> None:
        if not self._open:  # the first one was judged under the current router
            self._router = self._pipeline.router
        self._open.setdefault(conn.token_hash, set()).add(conn)
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run())

    def discard(self, conn: OpenSocket) -> None:
        same = self._open.get(conn.token_hash)
        if same is not None:
            same.discard(conn)
            if not same:
                del self._open[conn.token_hash]

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait({self._task})

    async def _run(self) -> None:
        while self._open:
            await asyncio.sleep(RECHECK_S)
            try:
                await self.sweep()
            except Exception:  # never let one bad sweep stop the watch
                log.exception("websocket token sweep failed")

    async def sweep(self) -> None:
        """Judge every open connection's token now (cache first, as requests are); after a
        reload (a new router), each connection's route first."""
        router = self._pipeline.router
        if router is not self._router:
            self._router = router
            self._rejudge_routes(router)
        local = self._pipeline.cache.local
        misses: list[str] = []
        for token_hash, conns in list(self._open.items()):
            if not token_hash:  # auth: none routes: watched for stalls only
                continue
            cached = local.get(token_hash)
            if cached is MISS:
                misses.append(token_hash)
            else:
                self._judge(conns, cached)
        if misses:
            await asyncio.gather(*(self._reread(h) for h in misses))
        stalled = time.monotonic() - WRITE_STALL_S
        for conns in self._open.values():
            for conn in conns:
                if 0 < conn.upstream_since < stalled:
                    conn.end(1001, STALLED)

    def _rejudge_routes(self, router: Router) -> None:
        """A reload may tighten a connection's route: a path that now matches no route that
        admits it, or an ``auth: none`` route that now requires a token, ends with 1008; else
        the connection takes the new route's scopes (the token is judged on them next)."""
        for token_hash, conns in list(self._open.items()):
            for conn in list(conns):
                if not conn.path:
                    continue
                try:
                    route = router.match(conn.path, "GET")
                except Refusal:
                    conn.end(POLICY, "route no longer admits this connection")
                    continue
                if route.auth_required and not token_hash:
                    conn.end(POLICY, "route now requires a token")
                else:
                    conn.scopes = route.scopes

    async def _reread(self, token_hash: str) -> None:
        pipeline = self._pipeline
        try:
            record = await pipeline.cache.lookup(token_hash, pipeline.store.get_by_hash)
        except StoreUnavailable:
            for conn in list(self._open.get(token_hash, ())):
                conn.end(TRY_AGAIN, "token cannot be verified now")
            return
        self._judge(self._open.get(token_hash, set()), record)

    def _judge(self, conns: set[OpenSocket], record: TokenRecord | None) -> None:
        if record is not None:
            now = self._pipeline.clock()
            # Pipeline._unusable is the one test of usability (revoked, expired, and whatever
            # else makes a record unusable); a rotated-out token past its grace is not usable
            # either, here without the replay handling a fresh presentation gets.
            if (self._pipeline._unusable(record, now) is None
                    and not record.is_replay(now)):
                for conn in list(conns):  # its scopes may have changed
                    if conn.scopes and tokens.has_scopes(record.scopes, conn.scopes) is not None:
                        conn.end(POLICY, "token lacks the route's scope")
                    elif conn.demanded and tokens.has_scopes(record.scopes,
                                                             conn.demanded) is not None:
                        conn.end(POLICY, "token lacks the endpoint's scope")
                return
        for conn in list(conns):
            conn.end(POLICY, "token no longer valid")



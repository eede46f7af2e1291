"""Route matching (SPEC §3/§6): first match wins; no match = auth required, no scope."""

from __future__ import annotations

from dataclasses import dataclass

from gateway.config import RateLimit, Route, Settings


@dataclass(frozen=True, slots=True)
class MatchedRoute:
    index: int  # position in the config, -1 for the implicit default; a stable metrics/limit key
    scopes: tuple[str, ...]
    auth_required: bool
    upstream: str
    rate_limit: RateLimit | None


def _matches(route: Route, path: str, method: str) -> bool:
    if route.methods is not None and method not in route.methods:
        return False
    pattern = route.path
    if pattern.endswith("*"):
        base = pattern[:-1]  # "/reports/"
        return path.startswith(base) or path == base.rstrip("/")
    return path == pattern


class Router:
    def __init__(self, settings: Settings) -> None:
        self._routes = [
            (r, MatchedRoute(i, r.scopes, r.auth == "required", r.upstream or settings.upstream,
                             r.rate_limit))
            for i, r in enumerate(settings.routes)]
        self._default = MatchedRoute(-1, (), True, settings.upstream, None)

    def match(self, path: str, method: str) -> MatchedRoute:
        for route, matched in self._routes:
            if _matches(route, path, method):
                return matched
        return self._default

    @property
    def upstreams(self) -> set[str]:
        return {m.upstream for _, m in self._routes} | {self._default.upstream}

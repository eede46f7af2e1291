"""Route matching (SPEC §3/§6): first match wins; no match = auth required, no scope.

The path rule. ``Router.match`` takes the request target's path as sent (percent-encoded, a
latin-1 str of the raw bytes) and matches routes on its percent-decoded form, the *literal* path.
The path itself is forwarded unchanged, so what counts is the route the upstream will serve it
under; upstreams read a path in more than one way, and each reading is computed here:

    decoded       decode once, split on "/" (so %2F splits too: nginx), resolve "." and "..",
                  with and without merging repeated slashes
    RFC 3986      resolve dot segments among the raw segments (%2E%2E counts, %2F does not), then
                  decode: most URL libraries and frameworks
    hardened      "\\" as "/" (IIS, some Java and Node servers), ";params" dropped from every
                  segment (Tomcat: /public/..;/admin is /admin), each and both, for every
                  reading above
    twice         the once-decoded path decoded again, then read as above: an upstream or a proxy
                  chain that decodes twice turns %252e%252e into ".."

When any reading matches a different route than the literal path does, the request is refused with
400 ``invalid_request`` and never forwarded: a path can only reach an upstream under the route it
was judged by. A path that does not start with "/" (``*``), with a NUL, invalid percent-encoding or
bytes that are not latin-1 is refused the same way. Paths whose readings all agree (``/static/./a``,
``/files/100%25``) pass unchanged.

Not covered (an upstream that needs them needs its own guard): case-insensitive upstreams (IIS:
/ADMIN), Unicode normalisation (fullwidth solidus), overlong UTF-8.

The hot path: a path with no "%", "\\", ";", "//", "/." and only ASCII is its own literal path and
has no other reading; it costs a few substring tests more than matching did before.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import unquote, unquote_to_bytes

from gateway.config import RateLimit, Route, Settings
from gateway.errors import Refusal


@dataclass(frozen=True, slots=True)
class MatchedRoute:
    index: int  # position in the config, -1 for the implicit default; a stable metrics/limit key
    scopes: tuple[str, ...]
    auth_required: bool
    upstream: str
    rate_limit: RateLimit | None


_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")


def _matches(route: Route, path: str, method: str) -> bool:
    if route.methods is not None and method not in route.methods:
        return False
    pattern = route.path
    if pattern.endswith("*"):
        base = pattern[:-1]  # "/reports/"
        return path.startswith(base) or path == base.rstrip("/")
    return path == pattern


def _refuse(why: str) -> Refusal:
    return Refusal(400, "invalid_request", f"the request path {why}")


def decode_path(raw: str) -> str:
    """The literal path: ``raw`` percent-decoded once (UTF-8; other bytes kept as surrogates so
    they can never equal a configured route). Raises Refusal 400 for a path the rule refuses."""
    if not raw.startswith("/"):
        raise _refuse("must start with '/'")
    if _BAD_ESCAPE.search(raw):
        raise _refuse("has invalid percent-encoding")
    try:
        data = unquote_to_bytes(raw.encode("latin-1"))
    except UnicodeEncodeError:
        raise _refuse("is not latin-1 bytes") from None
    if b"\x00" in data:
        raise _refuse("contains NUL")
    return data.decode("utf-8", "surrogateescape")


def _resolve(segments: list[str], merge: bool) -> str:
    """RFC 3986 dot-segment removal over ``segments`` (the first is the empty one before the
    leading "/"); ``merge`` also drops empty segments (repeated slashes)."""
    out: list[str] = []
    for seg in segments[1:]:
        if seg == "..":
            if out:
                out.pop()
        elif seg != "." and (seg or not merge):
            out.append(seg)
    trailing = segments[-1] in ("", ".", "..") and len(segments) > 1
    path = "/" + "/".join(out)
    return path + "/" if trailing and out and out[-1] else path


def _splits(path: str) -> list[list[str]]:
    """``path`` split into segments as each kind of upstream splits it: on "/", also on "\\",
    with ";params" dropped, and both (each separately: one upstream does one, another both)."""
    forms = [path, path.replace("\\", "/")] if "\\" in path else [path]
    out = []
    for form in forms:
        segments = form.split("/")
        out.append(segments)
        if ";" in form:
            out.append([s.split(";", 1)[0] for s in segments])
    return out


def _unquote(raw: str) -> str:
    return unquote_to_bytes(raw.encode("latin-1")).decode("utf-8", "surrogateescape")


def readings(raw: str, literal: str) -> set[str]:
    """Every path an upstream may serve ``raw`` as (see the module docstring); ``literal`` is
    ``decode_path(raw)``."""
    splits = _splits(literal)  # decoded first: an encoded "/" splits too (nginx)
    # RFC 3986: split the raw path, then decode each segment ("/" inside one is no separator)
    splits += [[_unquote(s) for s in segments] for segments in _splits(raw)]
    if "%" in literal:  # an upstream, or a chain of proxies, that decodes twice
        splits += _splits(unquote(literal, errors="surrogateescape"))
    return {_resolve(segments, merge) for segments in splits for merge in (True, False)}


class Router:
    def __init__(self, settings: Settings) -> None:
        self._routes = [
            (r, MatchedRoute(i, r.scopes, r.auth == "required", r.upstream or settings.upstream,
                             r.rate_limit))
            for i, r in enumerate(settings.routes)]
        self._default = MatchedRoute(-1, (), True, settings.upstream, None)

    def match(self, path: str, method: str) -> MatchedRoute:
        """The route for a raw request path (percent-encoded, as sent); Refusal 400 when the
        path is malformed or an upstream could serve it under another route."""
        if not (path.startswith("/") and path.isascii() and "%" not in path  # the hot path:
                and "//" not in path and "/." not in path and "\\" not in path  # plain paths,
                and ";" not in path):  # substring tests (a regex costs ~5x more here)
            return self._judge(path, method)
        for route, matched in self._routes:
            if _matches(route, path, method):
                return matched
        return self._default

    def _judge(self, path: str, method: str) -> MatchedRoute:
        literal = decode_path(path)
        matched = self._first(literal, method)
        for reading in readings(path, literal):
            if reading != literal and self._first(reading, method) is not matched:
                raise _refuse("reads as another route once dot segments, encoded or repeated "
                              "slashes are resolved")
        return matched

    def _first(self, path: str, method: str) -> MatchedRoute:
        for route, matched in self._routes:
            if _matches(route, path, method):
                return matched
        return self._default

    @property
    def upstreams(self) -> set[str]:
        return {m.upstream for _, m in self._routes} | {self._default.upstream}

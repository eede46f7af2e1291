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
    again         the decoded path decoded again, up to three more times, each read as above: an
                  upstream or a proxy chain that decodes twice turns %252e%252e into ".."
    NFKC          Unicode compatibility normalisation of a non-ASCII path (fullwidth U+FF0E is ".")

When any reading matches a different route than the literal path does, the request is refused with
400 ``invalid_request`` and never forwarded: a path can only reach an upstream under the route it
was judged by. A path that does not start with "/" (``*``), that holds a raw "#" (a fragment:
nginx's $request_uri keeps it, the upstream drops it), a control character (NUL, tab, ... encoded
or not), an overlong UTF-8 lead byte (%C0, %C1), invalid percent-encoding or bytes that are not
latin-1 is refused the same way. Paths whose readings all agree (``/static/./a``,
``/files/100%25``) pass unchanged. An exact route (no "*") also matches its path with one trailing
slash ("/admin/"), which many frameworks serve with the same handler.

Not covered (an upstream that needs them needs its own guard): case-insensitive upstreams (IIS,
ASP.NET, Express: /ADMIN), format suffixes (Rails: /reports.json served as /reports).

The hot path: a path of printable ASCII with no "%", "\\", ";", "#", "//", "/." is its own literal
path and has no other reading; it costs a few substring tests more than matching did before.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
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
    pattern: str = "default"  # the route's ``path`` as configured (the access log names it)


_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_OVERLONG = re.compile(rb"[\xc0\xc1]")  # only ever lead bytes of overlong forms ("%c0%ae" = ".")
_OVERRIDES = frozenset({b"x-http-method-override", b"x-http-method", b"x-method-override"})
MORE_DECODINGS = 3  # how many further decodings a proxy chain is assumed to apply at most


def _matches(route: Route, path: str, method: str) -> bool:
    if route.methods is not None and method not in route.methods:
        return False
    pattern = route.path
    if pattern.endswith("*"):
        base = pattern[:-1]  # "/reports/"
        return path.startswith(base) or path == base.rstrip("/")
    # "/admin/" too: Express, Spring and Werkzeug serve it with the "/admin" handler
    return path == pattern or (path[:-1] == pattern and path[-1:] == "/")


def _refuse(why: str) -> Refusal:
    return Refusal(400, "invalid_request", f"the request path {why}")


def decode_path(raw: str) -> str:
    """The literal path: ``raw`` percent-decoded once (UTF-8; other bytes kept as surrogates so
    they can never equal a configured route). Raises Refusal 400 for a path the rule refuses."""
    if not raw.startswith("/"):
        raise _refuse("must start with '/'")
    if "#" in raw:
        raise _refuse("must not contain a fragment ('#')")
    if _BAD_ESCAPE.search(raw):
        raise _refuse("has invalid percent-encoding")
    try:
        data = unquote_to_bytes(raw.encode("latin-1"))
    except UnicodeEncodeError:
        raise _refuse("is not latin-1 bytes") from None
    if _OVERLONG.search(data):
        raise _refuse("contains an overlong UTF-8 form")
    literal = data.decode("utf-8", "surrogateescape")
    if _CONTROL.search(literal) or _CONTROL.search(raw):
        raise _refuse("contains a control character")
    return literal


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
    again = literal
    for _ in range(MORE_DECODINGS):  # an upstream, or a chain of proxies, that decodes again
        if "%" not in again:
            break
        again = unquote(again, errors="surrogateescape")
        splits += _splits(again)
    if not literal.isascii():
        splits += _splits(unicodedata.normalize("NFKC", literal))
    return {_resolve(segments, merge) for segments in splits for merge in (True, False)}


class Router:
    def __init__(self, settings: Settings) -> None:
        self._routes = [
            (r, MatchedRoute(i, r.scopes, r.auth == "required", r.upstream or settings.upstream,
                             r.rate_limit, r.path))
            for i, r in enumerate(settings.routes)]
        self._default = MatchedRoute(-1, (), True, settings.upstream, None)
        # Only a route with `methods` makes the method matter (and an override worth judging).
        self.method_sensitive = any(r.methods is not None for r in settings.routes)

    def check_overrides(self, path: str, matched: MatchedRoute,
                        headers: Iterable[tuple[bytes, bytes]]) -> None:
        """Frameworks that honour a method-override header (Rails, Laravel, Express's
        method-override, Spring's HiddenHttpMethodFilter, ...) serve the request as that method:
        it must land on the route the real method was judged by, else Refusal 400."""
        for name, value in headers:
            if name.replace(b"_", b"-") in _OVERRIDES:
                other = value.decode("latin-1").strip().upper()
                if self.match(path, other) is not matched:
                    raise _refuse(f"is served by another route for the method override {other!r}")

    def match(self, path: str, method: str) -> MatchedRoute:
        """The route for a raw request path (percent-encoded, as sent); Refusal 400 when the
        path is malformed or an upstream could serve it under another route."""
        # The hot path: plain paths, by substring tests (a regex costs ~5x more here).
        if not (path.startswith("/") and path.isascii() and path.isprintable()
                and "%" not in path and "//" not in path and "/." not in path
                and "\\" not in path and ";" not in path and "#" not in path):
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

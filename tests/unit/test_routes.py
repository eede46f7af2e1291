"""The path rule (SPEC §3 routes): a raw path reaches an upstream only under the route it was
judged by. Pure logic: the router against independent models of normalising upstreams."""

from __future__ import annotations

import posixpath
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.config import Settings
from gateway.errors import Refusal
from gateway.routes import Router

ROUTES = [
    {"path": "/public/*", "auth": "none"},
    {"path": "/admin/*", "scopes": ["admin"]},
    {"path": "/exact"},
    {"path": "/café/*", "auth": "none"},
    {"path": "/*", "methods": ["POST"], "scopes": ["write"]},
]
ROUTER = Router(Settings(routes=ROUTES))
PUBLIC, ADMIN, DEFAULT = 0, 1, -1


def test_first_match_wins_and_star_matches_the_bare_prefix():
    router = Router(Settings(routes=[
        {"path": "/public/*", "auth": "none"},
        {"path": "/reports/*", "scopes": ["reports:read"]},
        {"path": "/*", "methods": ["POST"], "scopes": ["write"], "upstream": "http://u:2"},
        {"path": "/exact"},
    ]))
    assert not router.match("/public", "GET").auth_required
    assert not router.match("/public/a/b", "GET").auth_required
    assert router.match("/publicity", "GET").index == -1
    assert router.match("/reports", "GET").scopes == ("reports:read",)
    assert router.match("/x", "POST").upstream == "http://u:2"
    assert router.match("/exact", "GET").index == 3
    assert router.match("/x", "GET").index == -1 and router.match("/x", "GET").auth_required
    assert router.upstreams == {"http://127.0.0.1:9000", "http://u:2"}


def route_of(raw: str, method: str = "GET") -> int:
    return ROUTER.match(raw, method).index


def refused(raw: str, method: str = "GET") -> Refusal:
    with pytest.raises(Refusal) as caught:
        ROUTER.match(raw, method)
    assert (caught.value.status, caught.value.reason) == (400, "invalid_request")
    return caught.value


@pytest.mark.parametrize("raw", [
    "/public/../admin/x",           # dot segments
    "/public/%2e%2e/admin/x",       # encoded dot segments
    "/public/%2E%2e/admin/x",
    "/public/.%2e/admin/x",
    "/public%2f..%2fadmin/x",       # an encoded slash that nginx decodes before resolving
    "/public%2F%2e%2e%2Fadmin/x",
    "//admin/x",                    # repeated slashes: the literal path is no /admin/ path
    "/./admin/x",
    "/public//../admin/x",
    "/../admin/x",                  # above the root
    "/public/..;/admin/x",          # Tomcat's path parameters
    "/admin;x/y",
    "/public\\..\\admin/x",         # backslash as a separator (IIS, some Java/Node servers)
    "/public/%5c..%5cadmin/x",
    "/public/%252e%252e/admin/x",   # an upstream that decodes twice
    "/public/%252e%252e%252fadmin/x",
    "/public%252f..%252fadmin/x",
    "/x/../exact",                  # to an exact route
    "/exact/.",                     # reads as "/exact/", which the exact route covers
    "/public/%25252e%25252e/admin/x",  # decoded three times
    "/public/%ef%bc%8e%ef%bc%8e/admin/x",  # fullwidth dots, NFKC-normalised by some upstreams
])
def test_a_path_that_reads_as_another_route_is_refused(raw):
    assert "another route" in refused(raw).description


@pytest.mark.parametrize("raw", [
    "*",                            # GET * (was a 500)
    "http://evil/admin/x",          # absolute-form, if a server hands it on as the path
    "admin/x",
    "",
    "/a%00b",                       # NUL
    "/public/%zz",                  # invalid percent-encoding
    "/public/%4",
    "/public/%",
    "/caf\u0113",                   # not latin-1: never a raw byte string
    "/admin#x",                     # a fragment: nginx's $request_uri keeps it, upstreams drop it
    "/public/..%09/admin",          # control characters, encoded or raw
    "/public/%09../admin",
    "/public/\t../admin",
    "/public/%c0%ae%c0%ae/admin",   # overlong UTF-8 "."
])
def test_malformed_paths_are_refused(raw):
    refused(raw)


@pytest.mark.parametrize(("raw", "route"), [
    ("/public/x", PUBLIC),
    ("/public", PUBLIC),
    ("/admin/x", ADMIN),
    ("/%61dmin/x", ADMIN),          # decoded before matching (forward auth used not to)
    ("/%61dmin%2Fx", ADMIN),
    ("/public/./x", PUBLIC),        # readings agree: harmless, passed unchanged
    ("/public/a/../b", PUBLIC),
    ("/static/./a", DEFAULT),
    ("/files/100%25", DEFAULT),     # an encoded "%" that decodes to nothing routable
    ("/.well-known/x", DEFAULT),
    ("/exact", 2),
    ("/exact/", 2),                 # frameworks serve "/exact/" with the "/exact" handler
    ("/caf%C3%A9/x", 3),            # UTF-8, encoded
    ("/caf\xc3\xa9/x", 3),          # UTF-8, raw bytes as the proxy hands them (latin-1 str)
    ("/caf%E9/x", DEFAULT),         # not UTF-8: never equal to a configured route
    ("/x%ff", DEFAULT),
])
def test_paths_whose_readings_agree_match_their_route(raw, route):
    assert route_of(raw) == route


def test_methods_take_part_in_the_comparison():
    assert route_of("/x", "POST") == 4
    refused("/public/../x", "POST")  # literal /public/*, normalised /* for POST
    assert route_of("/a/../x", "POST") == 4  # both readings are the POST catch-all


# --- the property: models of upstreams, written independently of gateway.routes -------------

def _decode(s: str) -> str:
    data = re.sub(rb"%([0-9A-Fa-f]{2})", lambda m: bytes([int(m[1], 16)]), s.encode("latin-1"))
    return data.decode("utf-8", "surrogateescape")


def _utf8_bytes(text: str) -> str:
    """Decoded text as the bytes a second decoding pass reads (a latin-1 str, like a raw path)."""
    return text.encode("utf-8", "surrogateescape").decode("latin-1")


def _normpath(path: str) -> str:
    """Merge slashes and resolve dot segments as nginx and os.path do; keep a trailing slash."""
    merged = re.sub("/+", "/", path)
    out = posixpath.normpath(merged)
    if out != "/" and (merged.endswith("/") or re.search(r"/\.\.?$", merged)):
        out += "/"
    return out


def _remove_dot_segments(path: str) -> str:
    """RFC 3986 §5.2.4, the string-buffer algorithm as written there."""
    inp, out = path, ""
    while inp:
        if inp.startswith("../"):
            inp = inp[3:]
        elif inp.startswith("./"):
            inp = inp[2:]
        elif inp.startswith("/./"):
            inp = inp[2:]
        elif inp == "/.":
            inp = "/"
        elif inp.startswith("/../"):
            inp = inp[3:]
            out = out[:out.rfind("/")] if "/" in out else ""
        elif inp == "/..":
            inp = "/"
            out = out[:out.rfind("/")] if "/" in out else ""
        elif inp in (".", ".."):
            inp = ""
        else:
            cut = inp.find("/", 1)
            cut = len(inp) if cut < 0 else cut
            out, inp = out + inp[:cut], inp[cut:]
    return out


UPSTREAMS = {
    "nginx": lambda raw: _normpath(_decode(raw)),
    "rfc3986": lambda raw: _decode(_remove_dot_segments(re.sub("%2[eE]", ".", raw))),
    "tomcat": lambda raw: _normpath(re.sub(";[^/]*", "", _decode(raw))),
    "iis": lambda raw: _normpath(_decode(raw).replace("\\", "/")),
    "decodes-twice": lambda raw: _normpath(_decode(_utf8_bytes(_decode(raw)))),
}


def reference_route(path: str, method: str) -> int:
    """First match wins, as SPEC §3 words it; an exact route also covers its trailing-slash form
    (frameworks serve "/exact/" with the "/exact" handler)."""
    for i, r in enumerate(ROUTES):
        if "methods" in r and method not in r["methods"]:
            continue
        p = r["path"]
        if (p.endswith("*") and (path.startswith(p[:-1]) or path == p[:-2])) or path == p \
                or (not p.endswith("*") and path == p + "/"):
            return i
    return -1


PIECES = ["public", "admin", "exact", "x", "café".encode().decode("latin-1"), "caf%C3%A9",
          ".", "..", "%2e", "%2E%2e", ".%2e", "%2f", "%2F", "%252e", "%252e%252e", "%252f", "",
          ";x", "..;", "\\", "%5c", "%5C..", "%61dmin", "%2e%2e%2f", "%25"]


@st.composite
def raw_paths(draw: st.DrawFn) -> str:
    parts = draw(st.lists(st.tuples(st.sampled_from(["/", "/", "", "//", "\\"]),
                                    st.sampled_from(PIECES)), min_size=1, max_size=7))
    return "/" + "".join(sep + piece for sep, piece in parts).lstrip("/")


@settings(max_examples=3000, deadline=None)
@given(raw=raw_paths(), method=st.sampled_from(["GET", "POST"]))
def test_no_path_reaches_an_upstream_under_another_route(raw, method):
    try:
        judged = ROUTER.match(raw, method).index
    except Refusal as refusal:
        assert (refusal.status, refusal.reason) == (400, "invalid_request")
        return
    assert judged == reference_route(_decode(raw), method)  # the literal, decoded path
    for name, upstream in UPSTREAMS.items():
        served = upstream(raw)
        assert reference_route(served, method) == judged, (name, raw, served)


def test_the_property_finds_the_old_bypass():
    """The models do see the audit's bypasses: the literal route and the served one differ."""
    for raw in ("/public/../admin/x", "/public%2f..%2fadmin/x", "//admin/x"):
        literal = reference_route(_decode(raw), "GET")
        assert any(reference_route(u(raw), "GET") != literal for u in UPSTREAMS.values())

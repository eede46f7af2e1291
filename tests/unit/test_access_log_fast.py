"""The access log's fast paths (gateway.access_log) write the very bytes the general code did:
``format_line`` against the plain field-by-field formatter it replaced (kept here as the
reference), the integer millisecond formatting against ``repr(round(ms, 3))``, the cache of
repeated values against escaping them again, and the wall clock derived from perf_counter."""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Callable
from typing import Any

import pytest

from gateway import access_log
from gateway.access_log import (
    MAX_METHOD,
    PIPE_BUF,
    SHORTER,
    AccessLog,
    Entry,
    format_line,
    redact_path,
)

# --- the reference: format_line as it was written before its fast paths ----------------------

_quote: Callable[[str], str] = json.encoder.encode_basestring_ascii
_ENCODE = json.JSONEncoder(ensure_ascii=True, separators=(",", ":")).encode
_STRINGS = ("request_id", "client_ip", "method", "path", "route", "subject", "token_id")


def _text(value: bytes | str | None) -> str | None:
    if isinstance(value, bytes):
        return value.decode("utf-8", "backslashreplace")
    return value


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)


def _num(value: float | None) -> str:
    return "null" if value is None else repr(value)


def _q(value: str | None) -> str:
    return "null" if value is None else _quote(value)


def _ts(wall: float) -> str:
    second = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(int(wall)))
    return f"{second}.{int(wall * 1000) % 1000:03d}Z"


def reference_line(values: tuple[Any, ...]) -> bytes:
    (wall, request_id, client_ip, method, path, status, outcome, route, subject, token_id,
     upstream, total, bytes_in, bytes_out) = values
    ts = _ts(wall)
    rid, method_s, path_s = _text(request_id), _text(method), redact_path(_text(path))
    if method_s is not None and len(method_s) > MAX_METHOD:
        method_s = method_s[:MAX_METHOD]
    line = (f'{{"ts":"{ts}","request_id":{_q(rid)},"client_ip":{_q(client_ip)},'
            f'"method":{_q(method_s)},"path":{_q(path_s)},"status":{int(status)},'
            f'"outcome":{_q(outcome)},"route":{_q(route)},"subject":{_q(subject)},'
            f'"token_id":{_q(token_id)},"upstream_ms":{_num(_ms(upstream))},'
            f'"total_ms":{_num(_ms(total))},"bytes_in":{int(bytes_in)},'
            f'"bytes_out":{int(bytes_out)}}}\n').encode()
    if len(line) <= PIPE_BUF:
        return line
    doc: dict[str, Any] = {
        "ts": ts, "request_id": rid, "client_ip": client_ip, "method": method_s,
        "path": path_s, "status": status, "outcome": outcome, "route": route,
        "subject": subject, "token_id": token_id, "upstream_ms": _ms(upstream),
        "total_ms": _ms(total), "bytes_in": bytes_in, "bytes_out": bytes_out}
    doc["truncated"] = True
    for short in SHORTER:
        for key in _STRINGS:
            value = doc[key]
            if isinstance(value, str) and len(value) > short:
                doc[key] = value[:short]
        line = _ENCODE(doc).encode() + b"\n"
        if len(line) <= PIPE_BUF:
            break
    return line


# --- tricky lines --------------------------------------------------------------------------

_SECRET = "agt_" + "Ab3" * 12 + "Zz"
_BASE: dict[str, Any] = {
    "wall": 1_700_000_000.25, "request_id": b"0f1e2d3c4b5a69788796a5b4c3d2e1f0",
    "client_ip": "10.0.0.1", "method": "GET", "path": b"/api/v1/items/12345", "status": 200,
    "outcome": "ok", "route": "/api/*", "subject": "alice", "token_id": "tok_1",
    "upstream": 0.0123456, "total": 0.0201234, "bytes_in": 0, "bytes_out": 512}
_NASTY = ['q"uo\\te', "\x00\x1f\x7f\n\r\t", "caf\u00e9 \u2603 \U0001f600", "\udcff lone",
          "</script>", "\u2028\u2029", "x" * 5000]
_CASES: list[dict[str, Any]] = [
    {},
    {"client_ip": None, "route": None, "subject": None, "token_id": None, "upstream": None},
    {"method": None, "path": None, "request_id": None},  # forward auth, refused before reading
    *({"subject": text, "token_id": text, "route": text, "client_ip": text, "method": text,
       "request_id": text, "path": text, "outcome": text[:100]}  # outcomes: a closed set
      for text in _NASTY),
    {"subject": "\u00e9l\u00e8ve@\u00e9cole.fr"},  # a non-ASCII subject
    {"subject": "s\"" * 300, "route": "/r" * 150, "client_ip": "\u00e9" * 100},  # long, fit
    {"request_id": b"\xff\x00\"\\", "method": b"G\xffT", "path": b"/caf\xc3\xa9/\xff\xfe\x80"},
    {"path": b"/" + bytes(range(256))},
    {"path": "/" + "\x01" * 30_000, "subject": "\u2603" * 5000},  # cut to PIPE_BUF
    {"path": b"/p/" + b"y" * 5000, "route": "/r" * 2000, "request_id": b"\x02" * 200},
    {"path": f"/t/{_SECRET}"}, {"path": f"/x;jsessionid={_SECRET}/y".encode()},
    {"path": f"/p/agt%255F{_SECRET[4:]}/q"}, {"path": "/a%3Bsid%3Dopaque"},
    {"method": "X" * 5000}, {"method": "PROPFIND-LONG-" * 3},
    {"status": 499, "bytes_in": 10**12, "bytes_out": 0},
    {"status": True, "bytes_in": 3.7, "bytes_out": False},  # what int() made of them
    {"wall": 1_700_000_000.9999999}, {"wall": 1_700_000_000.0}, {"wall": 86_399.0005},
    {"wall": 1_799_999_999.0015}, {"wall": 0.0},
    {"upstream": 0.0, "total": -0.0}, {"upstream": 1e-9, "total": 5e-7},
    {"upstream": 0.0000005, "total": 0.0000015},  # ties at the microsecond
    {"upstream": 0.0625e-3, "total": 1.0000005e-3},
    {"upstream": 1e7, "total": 1e13},  # past the integer path's range
    {"upstream": -0.001, "total": float("inf")}, {"upstream": float("nan"), "total": 3600.0},
]


def _line(case: dict[str, Any]) -> tuple[Any, ...]:
    return tuple({**_BASE, **case}.values())


@pytest.mark.parametrize("case", _CASES)
def test_the_fast_line_is_the_general_line(case: dict[str, Any]) -> None:
    values = _line(case)
    expected = reference_line(values)
    assert format_line(values) == expected  # the repeated values' text not yet remembered
    assert format_line(values) == expected  # and remembered
    assert len(expected) <= PIPE_BUF


def test_random_lines_are_the_general_lines() -> None:
    rng = random.Random(6)
    pool = ["GET", "POST", "ok", "/a/*", None, "10.0.0.7", "bob", 'a"b', "\u00e9", "\x1b[0m",
            "tok_" + "x" * 12]
    for _ in range(3000):
        values = _line({
            "wall": rng.uniform(0, 2e9), "request_id": rng.randbytes(rng.randrange(0, 40)),
            "client_ip": rng.choice(pool), "method": rng.choice(pool),
            "path": rng.choice([rng.randbytes(rng.randrange(1, 60)), "/" + "_%;" * 3, None]),
            "status": rng.randrange(100, 600), "outcome": rng.choice(pool),
            "route": rng.choice(pool), "subject": rng.choice(pool), "token_id": rng.choice(pool),
            "upstream": rng.choice([None, rng.expovariate(100), rng.randrange(10**6) / 1e6]),
            "total": rng.choice([rng.expovariate(50), rng.randrange(10**7) / 1e6 + 5e-7]),
            "bytes_in": rng.randrange(10**9), "bytes_out": rng.randrange(10**9)})
        assert format_line(values) == reference_line(values), values


def test_milliseconds_are_written_as_repr_of_round_writes_them() -> None:
    rng = random.Random(7)
    values = [rng.random() * 10 ** rng.uniform(-8, 7) for _ in range(50_000)]
    values += [k / 1e6 for k in range(0, 20_000)]
    values += [k / 2e6 + d for k in range(0, 4000) for d in (0.0, 1e-15, -1e-15)]  # ties
    values += [math.nextafter(k / 2e6, side) for k in range(4000) for side in (0, 1)]
    values += [0.0, -0.0, 1e-300, 1e6 - 1e-9, 1e6, 1e6 + 1e-3, math.inf, -math.inf, math.nan]
    for seconds in values:
        assert access_log._ms_text(seconds) == _num(_ms(seconds)), repr(seconds)
    assert access_log._ms_text(None) == "null"


def test_the_cache_of_repeated_values_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(access_log, "MAX_QUOTED", 10)
    access_log._QUOTED.clear()
    access_log._QUOTED[None] = "null"
    for i in range(25):
        assert access_log._quoted(f'v"{i}') == _quote(f'v"{i}')
        assert len(access_log._QUOTED) <= 10
    assert access_log._quoted(None) == "null"


async def test_entry_send_hands_back_the_servers_send_to_await() -> None:
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def receive() -> dict[str, Any]:
        return {}

    entry = Entry(AccessLog(), {"type": "http"}, receive, send, time.perf_counter(), b"r")
    pending = entry.send({"type": "http.response.start", "status": 201, "headers": []})
    assert entry.status == 201 and not sent  # counted when called, sent when awaited
    await pending
    await entry.send({"type": "http.response.body", "body": b"abc"})
    assert len(sent) == 2 and entry.bytes_out == 3


def test_the_wall_clock_of_a_request_follows_time_time() -> None:
    log = AccessLog()
    scope = {"type": "http", "method": "GET", "path": "/a", "raw_path": b"/a"}

    async def nothing() -> dict[str, Any]:
        return {}

    async def ignore(message: dict[str, Any]) -> None:
        return None

    access_log._wall_offset[1] = -1e9  # as if last read long ago: read again now
    before = time.time()
    entry = Entry(log, scope, nothing, ignore, time.perf_counter(), b"r")
    log.record(entry, "ok", None)
    after = time.time()
    wall = log._pending.popleft()[0]
    assert before - 0.01 <= wall <= after + 0.01
    access_log._wall_offset[:] = [access_log._wall_offset[0] + 3600.0, time.perf_counter()]
    log.record(Entry(log, scope, nothing, ignore, time.perf_counter(), b"r"), "ok", None)
    assert log._pending.popleft()[0] > after + 3000  # the offset is used within a second...
    access_log._wall_offset[1] -= access_log.WALL_RESYNC_S + 0.1
    log.record(Entry(log, scope, nothing, ignore, time.perf_counter(), b"r"), "ok", None)
    assert abs(log._pending.popleft()[0] - time.time()) < 0.5  # ...then read again


def test_timestamps_of_lines_in_a_row_are_the_general_ones() -> None:
    """Many lines a millisecond (the last ts remembered), across millisecond, second and day
    boundaries, and back in time (a stepped clock)."""
    wall = 1_700_006_399.99
    walls = []
    for step in (0.0, 1e-5, 1e-4, 3e-4, 0.0007, 1e-6, 0.001, 0.0123, 0.5):
        wall += step
        walls += [wall, wall]
    walls += [86_399.9995, 86_399.9996, 86_400.0, 1_700_000_000.0, 1_699_999_999.9994]
    for wall in walls:
        values = _line({"wall": wall})
        assert format_line(values) == reference_line(values), wall

"""The access log's writer (gateway.access_log): lines are JSON whatever a client sends, written by
a thread in whole-line chunks of at most PIPE_BUF, bounded when stdout is stuck or gone."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway import access_log
from gateway.access_log import FIELDS, PIPE_BUF, AccessLog, Entry, format_line
from gateway.metrics import Metrics


def _values(path: bytes | str = "/a", **over: object) -> tuple[object, ...]:
    base: dict[str, object] = {
        "wall": 1_700_000_000.25, "request_id": b"rid-1", "client_ip": "10.0.0.1",
        "method": "GET", "path": path, "status": 200, "outcome": "ok", "route": "/a/*",
        "subject": "alice", "token_id": "tok_1", "upstream": 0.0123, "total": 0.02,
        "bytes_in": 3, "bytes_out": 5}
    base.update(over)
    return tuple(base.values())


def test_a_line_has_exactly_the_spec_fields() -> None:
    line = format_line(_values())
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    doc = json.loads(line)
    assert tuple(doc) == FIELDS
    assert doc["ts"] == "2023-11-14T22:13:20.250Z"
    assert (doc["request_id"], doc["path"], doc["upstream_ms"], doc["total_ms"]) == (
        "rid-1", "/a", 12.3, 20.0)


@pytest.mark.parametrize("path", [
    b"/a\x00b\x1b[31m\n{\"status\":1}\r", b"/caf\xc3\xa9/\xff\xfe\x80", "/\udcff/x\u2028y",
    b"/" + bytes(range(256))])
def test_control_characters_and_non_utf8_bytes_cannot_break_the_line(path: bytes | str) -> None:
    line = format_line(_values(path, method="GE\"T\n", request_id=b"\xff\x00"))
    assert line.isascii() and line.count(b"\n") == 1  # one line, whatever the input
    doc = json.loads(line)
    assert doc["status"] == 200 and doc["outcome"] == "ok"  # nothing injected
    if isinstance(path, bytes) and path.startswith(b"/caf"):
        assert doc["path"] == "/café/\\xff\\xfe\\x80"  # UTF-8 kept, other bytes escaped


def test_a_huge_line_is_cut_to_fit_an_atomic_pipe_write() -> None:
    line = format_line(_values("/" + "\x01" * 30_000, subject="\u2603" * 5000,
                               request_id=b"\x02" * 200, route="/r" * 2000))
    assert len(line) <= PIPE_BUF
    doc = json.loads(line)
    assert doc["truncated"] is True and doc["path"].startswith("/\x01")


async def test_entry_counts_body_bytes_status_and_head_time() -> None:
    sent: list[dict[str, object]] = []
    chunks = iter([{"type": "http.request", "body": b"abc", "more_body": True},
                   {"type": "http.request", "body": b"de"}])

    async def receive() -> dict[str, object]:
        return next(chunks)

    async def send(message: dict[str, object]) -> None:
        sent.append(message)

    entry = Entry(AccessLog(), {"type": "http"}, receive, send, time.perf_counter(), b"r")
    await entry.receive()
    await entry.receive()
    await entry.send({"type": "http.response.start", "status": 418, "headers": []})
    await entry.send({"type": "http.response.body", "body": b"12345", "more_body": True})
    await entry.send({"type": "http.response.body", "body": b""})
    assert (entry.bytes_in, entry.bytes_out, entry.status) == (5, 5, 418)
    assert entry.head_at > 0 and len(sent) == 3


@pytest.fixture
def pipe() -> Iterator[tuple[int, int]]:
    r, w = os.pipe()
    yield r, w
    for fd in (r, w):
        try:
            os.close(fd)
        except OSError:
            pass


def _queue(log: AccessLog, n: int, path: str = "/p") -> None:
    for i in range(n):
        log.decided(time.time(), time.perf_counter(), f"id-{i}".encode(), "127.0.0.1", "GET",
                    path, 200, "ok", "default", None)


def _read_all(fd: int) -> bytes:
    os.set_blocking(fd, False)
    out = b""
    while True:
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            return out
        if not chunk:
            return out
        out += chunk


def test_the_thread_writes_every_line_and_close_flushes(pipe: tuple[int, int]) -> None:
    r, w = pipe
    log = AccessLog(Metrics(), fd=w)
    log.start()
    _queue(log, 50)
    log.close()
    lines = _read_all(r).splitlines()
    assert [json.loads(x)["request_id"] for x in lines] == [f"id-{i}" for i in range(50)]
    assert log.dropped == 0


def test_chunks_end_on_line_boundaries_within_pipe_buf(pipe: tuple[int, int],
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    r, w = pipe
    writes: list[bytes] = []
    real = os.write
    monkeypatch.setattr(access_log.os, "write",
                        lambda fd, data: writes.append(bytes(data)) or real(fd, data))
    log = AccessLog(fd=w)
    _queue(log, 80, path="/" + "x" * 300)  # ~40 KiB: within the pipe, read after
    log._flush()
    assert len(writes) > 1
    assert all(len(chunk) <= PIPE_BUF and chunk.endswith(b"\n") for chunk in writes)
    assert len(_read_all(r).splitlines()) == 80


def test_to_a_regular_file_chunks_are_larger_and_still_whole_lines(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``serve >> file``: fewer, larger writes (a file write costs far more than a pipe's),
    each ending on a line boundary; every line arrives once, in order."""
    fd = os.open(tmp_path / "access.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    writes: list[bytes] = []
    real = os.write
    monkeypatch.setattr(access_log.os, "write",
                        lambda f, data: writes.append(bytes(data)) or real(f, data))
    try:
        log = AccessLog(fd=fd)
        _queue(log, 400, path="/" + "x" * 300)  # ~200 KiB
        log._flush()
    finally:
        os.close(fd)
    assert 1 < len(writes) < 400 * 400 // access_log.PIPE_BUF
    assert max(len(chunk) for chunk in writes) > access_log.PIPE_BUF
    assert all(len(chunk) <= access_log.FILE_CHUNK and chunk.endswith(b"\n") for chunk in writes)
    lines = (tmp_path / "access.log").read_bytes().splitlines()
    assert [json.loads(x)["request_id"] for x in lines] == [f"id-{i}" for i in range(400)]


def test_a_stuck_stdout_drops_and_counts_instead_of_growing(pipe: tuple[int, int],
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    r, w = pipe  # nobody reads r: the pipe fills and the writer thread blocks in write()
    monkeypatch.setattr(access_log, "MAX_PENDING", 100)
    metrics = Metrics()
    log = AccessLog(metrics, fd=w)
    log.start()
    started = time.perf_counter()
    for _ in range(40):  # ~6000 lines: far more than the pipe (64 KiB) plus the bound
        _queue(log, 150, path="/" + "y" * 200)
        time.sleep(0.01)
    assert time.perf_counter() - started < 10  # queueing never blocked on the stuck writer
    assert len(log._pending) <= 100
    assert log.dropped > 0
    assert metrics.registry.get_sample_value("authgate_access_log_dropped_total") == log.dropped
    os.close(r)  # the reader goes: the thread's write fails (EPIPE) and it gives up
    log.close(timeout=5)


def test_a_gone_stdout_is_counted_not_raised(pipe: tuple[int, int]) -> None:
    r, w = pipe
    os.close(r)
    log = AccessLog(fd=w)
    _queue(log, 10)
    log._flush()  # EPIPE (SIGPIPE is ignored by Python): dropped and counted, no exception
    _queue(log, 5)
    log._flush()
    assert log.dropped == 15


@pytest.mark.parametrize("text", ["plain", 'q"uo\\te', "\x00\x1f\x7f",
                                  "caf\u00e9 \u2603 \U0001f600", "\udcff lone", "</script>",
                                  "a" * 300])
def test_every_string_field_round_trips_exactly(text: str) -> None:
    line = format_line(_values(text.encode("utf-8", "surrogatepass") if "\udcff" not in text
                               else text, request_id=text, client_ip=text, method=text,
                               route=text, subject=text, token_id=text, outcome=text))
    doc = json.loads(line)
    assert line.isascii()
    for key in ("request_id", "client_ip", "method", "path", "route", "subject", "token_id",
                "outcome"):
        assert doc[key] == (text[:access_log.MAX_METHOD] if key == "method" else text), key
    assert (doc["status"], doc["bytes_in"], doc["bytes_out"]) == (200, 3, 5)


def test_a_client_that_left_before_the_response_is_logged_499() -> None:
    log = AccessLog()

    async def nothing() -> dict[str, object]:
        return {}

    async def ignore(message: dict[str, object]) -> None:
        return None

    scope = {"type": "http", "method": "GET", "path": "/a", "raw_path": b"/a"}
    log.record(Entry(log, scope, nothing, ignore, time.perf_counter(), b"r"), "ok", "1.2.3.4")
    doc = json.loads(format_line(log._pending.popleft()))
    assert (doc["status"], doc["outcome"], doc["bytes_out"]) == (499, "ok", 0)


_SECRET = "agt_" + "Ab3" * 12 + "Zz"  # the shape of a token: prefix, "_", 38 base62


@pytest.mark.parametrize(("path", "logged"), [
    (f"/t/{_SECRET}", "/t/[redacted]"),
    (f"/public/a%3Ftoken%3D{_SECRET}", "/public/a%3Ftoken%3D[redacted]"),
    (f"/x;jsessionid={_SECRET}/y", "/x;jsessionid=[redacted]/y"),
    ("/x;jsessionid=opaque;v=1", "/x;jsessionid=[redacted];v=[redacted]"),
    (f"/p/agt%5F{_SECRET[4:]}", "/p/[redacted]"),  # its "_" percent-encoded
    (f"/p/agt%255F{_SECRET[4:]}/q", "/p/[redacted]/q"),  # twice
    (f"/p/%61gt_{_SECRET[4:]}", "/p/%[redacted]"),  # a letter of the prefix encoded
    ("/a%3Bsid%3Dopaque", "/a;sid=[redacted]"),  # an encoded ;param=
    (f"/p/my_prefix_{_SECRET[4:]}", "/p/[redacted]"),  # any prefix
    (b"/t/" + _SECRET.encode() + b"/\xff", "/t/[redacted]/\\xff"),  # bytes as the proxy's
])
def test_a_credential_in_the_path_is_redacted(path: bytes | str, logged: str) -> None:
    line = format_line(_values(path))
    assert _SECRET[4:].encode() not in line and b"opaque" not in line
    assert json.loads(line)["path"] == logged


@pytest.mark.parametrize("path", ["/a/b/c", "/public/a%20b", "/files/my_report.pdf",
                                  "/x" * 100, "/a_b;c", ""])
def test_a_path_without_a_credential_is_logged_as_sent(path: str) -> None:
    assert access_log.redact_path(path) == path
    assert json.loads(format_line(_values(path)))["path"] == path


def test_a_long_method_is_cut() -> None:
    doc = json.loads(format_line(_values(method="X" * 5000)))
    assert doc["method"] == "X" * access_log.MAX_METHOD

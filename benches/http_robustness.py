#!/usr/bin/env python3
"""Probe the robustness of an HTTP/1.1 server listening on 127.0.0.1.

Usage:
    python3 http_robustness.py --port PORT [--path /health]
                               [--connections 1000] [--idle 200] [--json]

The target host is always 127.0.0.1; only the port and the request path are
configurable. Every check has a hard time limit, so the whole run ends within
about 70 s even against a server that accepts connections and never answers. Each check prints exactly
one line:

    PASS|FAIL name: detail (measured numbers)

and the process exits with status 1 if any check failed, 0 otherwise
(2 for bad command-line arguments). With --json a JSON object holding all
results is printed after the check lines.

"Still serves" below means: a normal ``GET <path>`` answered with 200 within
3 s; a fast failure (refused, reset, other status) is retried up to 3 times
so a server gets a moment to recover, a timeout is not retried.

Checks, in the order they run:

baseline
    One ``GET <path>``. PASS if the status is 200; latency is reported.

slowloris
    Opens --idle connections that each send only a partial request head,
    ``GET / HTTP/1.1\\r\\nHost: x\\r\\n``, and never finish it. Half of them then
    stay silent; the other half trickle one more header byte every second
    (cycling through ``X-a: b\\r\\n``), which defeats servers that only reset
    a per-read timeout. While they are open, 5 normal GETs are sent one after
    another. The idle connections are polled with recv() to see when the
    server closes them, for at most 15 s after they were opened.
    PASS if all 5 normal GETs got 200 within 2 s each AND the server closed
    every stalled connection within 15 s ("closed after X s"); otherwise FAIL
    ("still open after 15 s" or the GET failures are listed).

oversized-head
    A GET whose single header value is 100 KB long. The request is sent while
    reading, so an early answer is seen even if the server stops reading.
    PASS if a 4xx status (431, 400 and 413 are the usual ones) is read back
    and the server still serves afterwards. A close without any status line
    is reported but counts as FAIL.

oversized-body
    A POST to <path> declaring ``Content-Length: 10000000`` but sending only
    4 KB of body. PASS if a 4xx status (413 ideally) arrives within 6 s and
    the server still serves afterwards. A server that silently waits for the
    rest of the body FAILs with "no response within 6 s".

malformed
    Six broken requests, each on its own connection, sent concurrently:
    a garbage request line, a request line with only a method, an unknown
    HTTP version (HTTP/9.9), binary bytes (looks like a TLS ClientHello),
    a header line without a colon, and a request line with a 20 KB path.
    Each must within 6 s either get a 4xx/5xx status line (400, 414, 431,
    505 are typical) or see the connection closed/reset by the server.
    A 1xx/2xx/3xx answer or no reaction within 6 s is a failure for that
    case. A reply without a status line (such as an HTTP/0.9-style error
    page) counts as a close if the server then closes the connection.
    PASS if all six cases are handled and the server still serves.

flood
    --connections simultaneous connections (non-blocking sockets driven by
    one selector, no threads), each sending one GET <path>. Counts 200
    answers, other statuses, refused / reset / closed-without-answer
    connections, timeouts (15 s limit) and the wall time. PASS if at least
    one GET got 200 and the server still serves afterwards. A server that
    caps concurrent connections may refuse some; that is reported, not
    failed. The soft RLIMIT_NOFILE is raised to the hard limit at start; if
    it is still too low, the count is reduced and the reduction reported.

after
    A final GET <path>. PASS if the status is 200.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import errno
import json
import resource
import selectors
import socket
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any

HOST = "127.0.0.1"

# Time limits, in seconds.
CONNECT_TIMEOUT = 5.0          # a single blocking connect
BASELINE_TIMEOUT = 5.0         # baseline and final GET
ALIVE_TIMEOUT = 3.0            # each attempt of the "still serves" GET
ALIVE_ATTEMPTS = 3
ALIVE_RETRY_PAUSE = 0.5
SLOWLORIS_OPEN_TIMEOUT = 5.0   # establishing the idle connections
SLOWLORIS_SETTLE = 1.0         # pause before the normal GETs
SLOWLORIS_GETS = 5
SLOWLORIS_GET_TIMEOUT = 2.0
SLOWLORIS_CLOSE_CAP = 15.0     # measured from the moment the heads were sent
SLOWLORIS_TRICKLE_INTERVAL = 1.0
OVERSIZED_TIMEOUT = 6.0
MALFORMED_TIMEOUT = 6.0
FLOOD_TIMEOUT = 15.0

# Sizes.
OVERSIZED_HEADER_BYTES = 100 * 1024
OVERSIZED_BODY_DECLARED = 10_000_000
OVERSIZED_BODY_SENT = 4 * 1024
LONG_PATH_BYTES = 20 * 1024
MAX_RESPONSE_HEAD = 64 * 1024  # parser gives up on longer response heads
FD_RESERVE = 64                # descriptors kept free for everything else

SLOWLORIS_HEAD = b"GET / HTTP/1.1\r\nHost: x\r\n"
SLOWLORIS_TRICKLE = b"X-a: b\r\n"

USER_AGENT = "http-robustness-probe"


# --------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------

def ms(seconds: float | None) -> str:
    return "n/a" if seconds is None else f"{seconds * 1000:.1f} ms"


def percentile(sorted_values: list[float], fraction: float) -> float | None:
    if not sorted_values:
        return None
    index = min(len(sorted_values) - 1, int(round(fraction * (len(sorted_values) - 1))))
    return sorted_values[index]


def error_name(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.errno is not None:
        return errno.errorcode.get(exc.errno, str(exc.errno))
    return type(exc).__name__


def build_get(port: int, path: str) -> bytes:
    return (
        f"GET {path} HTTP/1.1\r\n"
        f"Host: {HOST}:{port}\r\n"
        f"User-Agent: {USER_AGENT}\r\n"
        "Accept: */*\r\n"
        "Connection: close\r\n"
        "\r\n"
    ).encode("ascii")


def raise_fd_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit; return the soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard if hard != resource.RLIM_INFINITY else 1 << 20
    if soft == resource.RLIM_INFINITY or soft >= wanted:
        return soft if soft != resource.RLIM_INFINITY else wanted
    for candidate in (wanted, 65536, 16384, 4096):
        if candidate <= soft:
            break
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (candidate, hard))
            return candidate
        except (ValueError, OSError):
            continue
    return soft


# --------------------------------------------------------------------------
# Response parsing
# --------------------------------------------------------------------------

class ResponseParser:
    """Incremental HTTP/1.x response parser that only tracks what the probe
    needs: the status code and whether the response (or connection) ended.

    Body bytes are counted, not stored. Chunked bodies are considered
    complete when the stream ends in ``0\\r\\n\\r\\n`` (no trailers), which is
    enough because every probe request asks for ``Connection: close``.
    A reply that does not start with ``HTTP/1.`` sets ``not_http``; the rest
    of it is discarded and the parser then only waits for the close.
    """

    def __init__(self) -> None:
        self.head = bytearray()
        self.status: int | None = None
        self.reason = ""
        self.not_http = False          # peer sent bytes that are not HTTP
        self.head_done = False
        self.content_length: int | None = None
        self.chunked = False
        self.body_seen = 0
        self.body_tail = b""
        self.complete = False          # a whole response was received
        self.eof = False               # peer closed (or reset) the connection

    @property
    def done(self) -> bool:
        return self.complete or self.eof

    def feed(self, data: bytes) -> None:
        if not data:
            self.eof = True
            return
        if self.not_http:
            return                              # discard; wait for the close
        if not self.head_done:
            self.head += data
            self._parse_head()
        else:
            self._feed_body(data)

    def _parse_head(self) -> None:
        if self.status is None:
            if not b"HTTP/1.".startswith(bytes(self.head[:7])):
                self.not_http = True
                return
            line_end = self.head.find(b"\r\n")
            if line_end == -1:
                return
            parts = bytes(self.head[:line_end]).split(b" ", 2)
            if len(parts) < 2 or not parts[1].isdigit() or len(parts[1]) != 3:
                self.not_http = True
                return
            self.status = int(parts[1])
            self.reason = parts[2].decode("latin-1").strip() if len(parts) > 2 else ""
        end = self.head.find(b"\r\n\r\n")
        if end == -1:
            if len(self.head) > MAX_RESPONSE_HEAD:
                self.not_http = True
            return
        head, rest = bytes(self.head[:end]), bytes(self.head[end + 4:])
        if 100 <= self.status < 200:           # interim response: start over
            self.head = bytearray(rest)
            self.status = None
            if rest:
                self._parse_head()
            return
        self.head_done = True
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            value = value.strip()
            if name == b"content-length" and value.isdigit():
                self.content_length = int(value)
            elif name == b"transfer-encoding" and b"chunked" in value.lower():
                self.chunked = True
        if self.status in (204, 304):
            self.content_length = 0
        if self.chunked:
            self.content_length = None
        self._feed_body(rest)

    def _feed_body(self, data: bytes) -> None:
        self.body_seen += len(data)
        if self.content_length is not None:
            if self.body_seen >= self.content_length:
                self.complete = True
        elif self.chunked:
            self.body_tail = (self.body_tail + data)[-5:]
            if self.body_tail == b"0\r\n\r\n":
                self.complete = True


# --------------------------------------------------------------------------
# One request/response exchange on one connection
# --------------------------------------------------------------------------

@dataclass
class Outcome:
    status: int | None = None
    reason: str = ""
    latency: float | None = None        # seconds from connect start to the end
    connect_error: str | None = None
    closed: bool = False                # server closed before a full response
    reset: bool = False
    timed_out: bool = False
    not_http: bool = False
    send_error: str | None = None
    bytes_sent: int = 0

    def describe(self) -> str:
        if self.connect_error:
            return f"connect failed ({self.connect_error})"
        if self.status is not None:
            text = f"status {self.status}"
            if self.timed_out:
                text += " (then no close)"
            return text
        if self.not_http:
            if self.timed_out:
                return "non-HTTP reply, then no close (timeout)"
            return "non-HTTP reply, then " + ("reset" if self.reset else "closed")
        if self.reset:
            return "connection reset without status"
        if self.closed:
            return "connection closed without status"
        if self.timed_out:
            return "no response (timeout)"
        return "no response"


def exchange(port: int, payload: bytes, timeout: float, until_status: bool = False) -> Outcome:
    """Connect, send ``payload`` while reading, and wait for the response.

    Reading and writing are interleaved so an early answer (e.g. 431 sent
    while a huge header is still being uploaded) is not lost. Sending stops
    once a status line has arrived. With ``until_status`` the exchange ends
    at the status line; otherwise it waits for the full response or a close.
    Never takes longer than ``timeout`` seconds.
    """
    out = Outcome()
    start = time.monotonic()
    deadline = start + timeout
    try:
        sock = socket.create_connection((HOST, port), timeout=min(timeout, CONNECT_TIMEOUT))
    except OSError as exc:
        out.connect_error = error_name(exc)
        out.latency = time.monotonic() - start
        return out
    parser = ResponseParser()
    view = memoryview(payload)
    sending = bool(payload)
    sel = selectors.DefaultSelector()
    try:
        sock.setblocking(False)
        sel.register(sock, selectors.EVENT_READ | (selectors.EVENT_WRITE if sending else 0))
        while True:
            if parser.done or (until_status and (parser.status or 0) >= 200):
                break
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                out.timed_out = True
                break
            for _key, mask in sel.select(remaining):
                if mask & selectors.EVENT_READ:
                    try:
                        data = sock.recv(65536)
                    except BlockingIOError:
                        data = None
                    except OSError:          # ECONNRESET and friends
                        out.reset = True
                        data = b""
                    if data is not None:
                        parser.feed(data)
                if sending and mask & selectors.EVENT_WRITE:
                    try:
                        out.bytes_sent += sock.send(view[out.bytes_sent:out.bytes_sent + 65536])
                    except BlockingIOError:
                        pass
                    except OSError as exc:   # EPIPE / ECONNRESET: keep reading
                        out.send_error = error_name(exc)
                    if (out.send_error or out.bytes_sent >= len(payload)
                            or parser.status is not None):
                        sending = False
                        if not parser.done:
                            sel.modify(sock, selectors.EVENT_READ)
    finally:
        sel.close()
        sock.close()
    out.latency = time.monotonic() - start
    out.status = parser.status
    out.reason = parser.reason
    out.not_http = parser.not_http
    if parser.eof and not parser.complete and not out.reset:
        out.closed = True
    return out


def http_get(port: int, path: str, timeout: float) -> Outcome:
    return exchange(port, build_get(port, path), timeout)


def still_serves(port: int, path: str) -> tuple[bool, str]:
    """Return (ok, description) for the "still serves" follow-up GET.

    Fast failures (refused, reset, non-200) are retried up to ALIVE_ATTEMPTS
    times to give a recovering server a moment; a timeout is not retried.
    """
    last: Outcome | None = None
    for attempt in range(1, ALIVE_ATTEMPTS + 1):
        last = http_get(port, path, ALIVE_TIMEOUT)
        if last.status == 200:
            suffix = "" if attempt == 1 else f" on attempt {attempt}"
            return True, f"follow-up GET 200 in {ms(last.latency)}{suffix}"
        if last.timed_out:
            break                  # a hung server will not recover in a moment
        if attempt < ALIVE_ATTEMPTS:
            time.sleep(ALIVE_RETRY_PAUSE)
    assert last is not None
    return False, f"follow-up GET failed ({attempt}x): {last.describe()}"


# --------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------

@dataclass
class Result:
    name: str
    passed: bool
    detail: str
    metrics: dict[str, Any] = field(default_factory=dict)

    def line(self) -> str:
        return f"{'PASS' if self.passed else 'FAIL'} {self.name}: {self.detail}"


# --------------------------------------------------------------------------
# Checks
# --------------------------------------------------------------------------

def check_baseline(port: int, path: str, name: str = "baseline") -> Result:
    out = http_get(port, path, BASELINE_TIMEOUT)
    metrics = {"status": out.status, "latency_ms": round(out.latency * 1000, 2) if out.latency else None}
    if out.status == 200:
        return Result(name, True, f"GET {path} -> 200 in {ms(out.latency)}", metrics)
    return Result(name, False, f"GET {path} -> {out.describe()} after {ms(out.latency)}", metrics)


class IdleSwarm:
    """Connections that send a partial request head and then stall.

    Connections with an even index trickle one header byte per second; the
    others stay silent. A background thread watches all of them with recv()
    and records when the server closes each one.
    """

    def __init__(self, port: int, count: int) -> None:
        self.port = port
        self.count = count
        self.socks: list[socket.socket] = []
        self.connect_failures: dict[str, int] = {}
        self.closed_at: dict[int, float] = {}
        self.answered: set[int] = set()
        self.t_open = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _fail(self, reason: str) -> None:
        self.connect_failures[reason] = self.connect_failures.get(reason, 0) + 1

    def open(self) -> None:
        """Connect all sockets in parallel and send the partial heads."""
        sel = selectors.DefaultSelector()
        pending = 0
        for _ in range(self.count):
            try:
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            except OSError as exc:
                self._fail(error_name(exc))
                continue
            sock.setblocking(False)
            rc = sock.connect_ex((HOST, self.port))
            if rc in (0, errno.EINPROGRESS):
                sel.register(sock, selectors.EVENT_WRITE)
                pending += 1
            else:
                self._fail(errno.errorcode.get(rc, str(rc)))
                sock.close()
        deadline = time.monotonic() + SLOWLORIS_OPEN_TIMEOUT
        while pending and time.monotonic() < deadline:
            for key, _mask in sel.select(max(0.0, deadline - time.monotonic())):
                sock = key.fileobj
                sel.unregister(sock)
                pending -= 1
                rc = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if rc:
                    self._fail(errno.errorcode.get(rc, str(rc)))
                    sock.close()
                    continue
                try:
                    sock.send(SLOWLORIS_HEAD)
                    self.socks.append(sock)
                except OSError as exc:
                    self._fail(error_name(exc))
                    sock.close()
        for key in list(sel.get_map().values()):
            self._fail("connect timeout")
            key.fileobj.close()
        sel.close()
        self.t_open = time.monotonic()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        sel = selectors.DefaultSelector()
        for index, sock in enumerate(self.socks):
            sel.register(sock, selectors.EVENT_READ, index)
        deadline = self.t_open + SLOWLORIS_CLOSE_CAP
        next_tick = self.t_open + SLOWLORIS_TRICKLE_INTERVAL
        tick = 0

        def mark_closed(index: int) -> None:
            if index not in self.closed_at:
                self.closed_at[index] = time.monotonic() - self.t_open
                sel.unregister(self.socks[index])

        while len(self.closed_at) < len(self.socks) and not self._stop.is_set():
            now = time.monotonic()
            if now >= deadline:
                break
            for key, _mask in sel.select(max(0.0, min(next_tick, deadline) - now)):
                index = key.data
                try:
                    data = self.socks[index].recv(4096)
                except BlockingIOError:
                    continue
                except OSError:
                    data = b""
                if data:
                    self.answered.add(index)
                else:
                    mark_closed(index)
            if time.monotonic() >= next_tick:
                byte = SLOWLORIS_TRICKLE[tick % len(SLOWLORIS_TRICKLE):][:1]
                for index in range(0, len(self.socks), 2):
                    if index in self.closed_at:
                        continue
                    try:
                        self.socks[index].send(byte)
                    except BlockingIOError:
                        pass
                    except OSError:
                        mark_closed(index)
                tick += 1
                next_tick += SLOWLORIS_TRICKLE_INTERVAL
        sel.close()

    def wait(self) -> None:
        if self._thread is not None:
            remaining = self.t_open + SLOWLORIS_CLOSE_CAP + 1.0 - time.monotonic()
            self._thread.join(max(0.0, remaining))
            self._stop.set()
            self._thread.join()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        for sock in self.socks:
            sock.close()


def check_slowloris(port: int, path: str, idle: int) -> Result:
    swarm = IdleSwarm(port, idle)
    try:
        swarm.open()
        swarm.start()
        time.sleep(SLOWLORIS_SETTLE)
        gets = [http_get(port, path, SLOWLORIS_GET_TIMEOUT) for _ in range(SLOWLORIS_GETS)]
        swarm.wait()
    finally:
        swarm.close()

    opened = len(swarm.socks)
    served = [g for g in gets if g.status == 200 and g.latency is not None
              and g.latency <= SLOWLORIS_GET_TIMEOUT]
    max_latency = max((g.latency for g in gets if g.latency is not None), default=None)
    trickle_idx = set(range(0, opened, 2))
    silent_idx = set(range(1, opened, 2))

    def group(indices: set[int]) -> str:
        closed = [swarm.closed_at[i] for i in indices if i in swarm.closed_at]
        text = f"{len(closed)}/{len(indices)} closed"
        if closed:
            text += f" by {max(closed):.1f} s"
        return text

    all_closed = opened > 0 and len(swarm.closed_at) == opened
    gets_ok = len(served) == SLOWLORIS_GETS
    metrics = {
        "idle_requested": idle,
        "idle_opened": opened,
        "idle_connect_failures": swarm.connect_failures,
        "normal_gets_ok": len(served),
        "normal_gets": SLOWLORIS_GETS,
        "normal_get_statuses": [g.status for g in gets],
        "normal_get_max_latency_ms": round(max_latency * 1000, 2) if max_latency is not None else None,
        "idle_closed": len(swarm.closed_at),
        "idle_answered_before_close": len(swarm.answered),
        "idle_closed_after_s": round(max(swarm.closed_at.values()), 2) if all_closed else None,
        "close_cap_s": SLOWLORIS_CLOSE_CAP,
    }

    parts = [f"{len(served)}/{SLOWLORIS_GETS} normal GETs 200 within "
             f"{SLOWLORIS_GET_TIMEOUT:.0f} s (max {ms(max_latency)})"]
    if not gets_ok:
        bad = [g.describe() for g in gets if g not in served]
        parts.append("failed: " + ", ".join(bad))
    if opened == 0:
        parts.append("no idle connection could be opened")
    elif all_closed:
        parts.append(f"idle connections closed after {max(swarm.closed_at.values()):.1f} s")
    else:
        parts.append(f"idle connections still open after {SLOWLORIS_CLOSE_CAP:.0f} s")
    if opened:
        parts.append(f"{opened}/{idle} idle opened; silent {group(silent_idx)}; "
                     f"trickling {group(trickle_idx)}; {len(swarm.answered)} got a reply")
    if swarm.connect_failures:
        parts.append("connect failures " + ", ".join(f"{k}={v}" for k, v in swarm.connect_failures.items()))
    return Result("slowloris", gets_ok and all_closed, "; ".join(parts), metrics)


def check_oversized_head(port: int, path: str) -> Result:
    payload = (
        f"GET {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\nUser-Agent: {USER_AGENT}\r\n"
        "Connection: close\r\nX-Oversized: "
    ).encode("ascii") + b"a" * OVERSIZED_HEADER_BYTES + b"\r\n\r\n"
    out = exchange(port, payload, OVERSIZED_TIMEOUT, until_status=True)
    alive, alive_text = still_serves(port, path)
    is_4xx = out.status is not None and 400 <= out.status < 500
    metrics = {"header_bytes": OVERSIZED_HEADER_BYTES, "status": out.status,
               "bytes_sent": out.bytes_sent, "response_ms": round(out.latency * 1000, 2),
               "send_error": out.send_error, "still_serves": alive}
    detail = (f"{OVERSIZED_HEADER_BYTES // 1024} KB header -> {out.describe()} after "
              f"{ms(out.latency)} ({out.bytes_sent}/{len(payload)} bytes sent"
              f"{', send ' + out.send_error if out.send_error else ''}); {alive_text}")
    if out.status is not None and not is_4xx:
        detail += "; expected 4xx"
    return Result("oversized-head", is_4xx and alive, detail, metrics)


def check_oversized_body(port: int, path: str) -> Result:
    payload = (
        f"POST {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\nUser-Agent: {USER_AGENT}\r\n"
        f"Content-Type: application/octet-stream\r\nContent-Length: {OVERSIZED_BODY_DECLARED}\r\n"
        "Connection: close\r\n\r\n"
    ).encode("ascii") + b"b" * OVERSIZED_BODY_SENT
    out = exchange(port, payload, OVERSIZED_TIMEOUT, until_status=True)
    alive, alive_text = still_serves(port, path)
    is_4xx = out.status is not None and 400 <= out.status < 500
    metrics = {"declared_length": OVERSIZED_BODY_DECLARED, "body_sent": OVERSIZED_BODY_SENT,
               "status": out.status, "response_ms": round(out.latency * 1000, 2),
               "still_serves": alive}
    reaction = out.describe()
    if out.timed_out and out.status is None:
        reaction = f"no response within {OVERSIZED_TIMEOUT:.0f} s (server waiting for the body?)"
    detail = (f"POST declaring {OVERSIZED_BODY_DECLARED} bytes, {OVERSIZED_BODY_SENT} sent -> "
              f"{reaction} after {ms(out.latency)}; {alive_text}")
    if out.status is not None and not is_4xx:
        detail += "; expected 413 or another 4xx"
    return Result("oversized-body", is_4xx and alive, detail, metrics)


MALFORMED_CASES: list[tuple[str, bytes]] = [
    ("garbage", b"GARBAGE\r\n\r\n"),
    ("method-only", b"GET\r\n\r\n"),
    ("bad-version", b"GET / HTTP/9.9\r\n\r\n"),
    ("binary", b"\x00\xff\x16\x03\x01" + b"\r\n\r\n"),
    ("header-no-colon", b"GET / HTTP/1.1\r\nHost: x\r\nThis header line has no colon\r\n\r\n"),
    ("long-request-line", b"GET /" + b"a" * LONG_PATH_BYTES + b" HTTP/1.1\r\nHost: x\r\n\r\n"),
]


def check_malformed(port: int, path: str) -> Result:
    with concurrent.futures.ThreadPoolExecutor(max_workers=len(MALFORMED_CASES)) as pool:
        futures = {name: pool.submit(exchange, port, payload, MALFORMED_TIMEOUT, True)
                   for name, payload in MALFORMED_CASES}
        outcomes = {name: fut.result() for name, fut in futures.items()}
    alive, alive_text = still_serves(port, path)

    verdicts: dict[str, dict[str, Any]] = {}
    summary = []
    for name, out in outcomes.items():
        if out.status is not None:
            ok = out.status >= 400
            short = str(out.status)
        elif out.connect_error:
            ok, short = False, f"connect-{out.connect_error}"
        elif out.timed_out:
            ok, short = False, f"hang>{MALFORMED_TIMEOUT:.0f}s"
        else:
            ok = True
            short = "reset" if out.reset else "closed"
            if out.not_http:
                short = "non-http-reply+" + short
        verdicts[name] = {"ok": ok, "result": short, "ms": round(out.latency * 1000, 2)}
        summary.append(f"{name}={short}{'' if ok else '(!)'}")
    good = sum(v["ok"] for v in verdicts.values())
    slowest = max(o.latency for o in outcomes.values())
    detail = (f"{good}/{len(MALFORMED_CASES)} rejected or closed (slowest {ms(slowest)}): "
              f"{' '.join(summary)}; {alive_text}")
    metrics = {"cases": verdicts, "still_serves": alive}
    return Result("malformed", good == len(MALFORMED_CASES) and alive, detail, metrics)


class _FloodConn:
    __slots__ = ("sock", "start", "sent", "parser", "connected")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.start = time.monotonic()
        self.sent = 0
        self.parser = ResponseParser()
        self.connected = False


def check_flood(port: int, path: str, connections: int, fd_soft: int) -> Result:
    limit = max(1, fd_soft - FD_RESERVE)
    count = min(connections, limit)
    request = build_get(port, path)
    counters = {"ok_200": 0, "refused": 0, "reset": 0, "closed_no_status": 0,
                "timeout": 0, "local_error": 0}
    other_status: dict[int, int] = {}
    latencies: list[float] = []
    sel = selectors.DefaultSelector()
    live = 0

    def finish(conn: _FloodConn, category: str | None = None) -> None:
        nonlocal live
        status = conn.parser.status
        if category is None:
            if status == 200:
                counters["ok_200"] += 1
                latencies.append(time.monotonic() - conn.start)
            elif status is not None:
                other_status[status] = other_status.get(status, 0) + 1
            else:
                category = "closed_no_status"
        if category is not None:
            if status is not None and category in ("reset", "timeout"):
                # A status line arrived before the reset/timeout: count the status.
                if status == 200:
                    counters["ok_200"] += 1
                    latencies.append(time.monotonic() - conn.start)
                else:
                    other_status[status] = other_status.get(status, 0) + 1
            else:
                counters[category] += 1
        sel.unregister(conn.sock)
        conn.sock.close()
        live -= 1

    t0 = time.monotonic()
    for _ in range(count):
        try:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        except OSError:
            counters["local_error"] += 1
            continue
        sock.setblocking(False)
        rc = sock.connect_ex((HOST, port))
        if rc not in (0, errno.EINPROGRESS):
            counters["refused" if rc == errno.ECONNREFUSED else "local_error"] += 1
            sock.close()
            continue
        sel.register(sock, selectors.EVENT_WRITE, _FloodConn(sock))
        live += 1

    deadline = t0 + FLOOD_TIMEOUT
    while live and time.monotonic() < deadline:
        for key, mask in sel.select(max(0.0, deadline - time.monotonic())):
            conn: _FloodConn = key.data
            if not conn.connected:
                rc = conn.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if rc:
                    finish(conn, "refused" if rc == errno.ECONNREFUSED else "reset")
                    continue
                conn.connected = True
            if mask & selectors.EVENT_WRITE:
                try:
                    conn.sent += conn.sock.send(request[conn.sent:])
                except BlockingIOError:
                    continue
                except OSError:
                    finish(conn, "reset")
                    continue
                if conn.sent >= len(request):
                    sel.modify(conn.sock, selectors.EVENT_READ, conn)
                continue
            try:
                data = conn.sock.recv(65536)
            except BlockingIOError:
                continue
            except OSError:
                finish(conn, "reset")
                continue
            conn.parser.feed(data)
            if conn.parser.done:
                finish(conn)
    for key in list(sel.get_map().values()):
        finish(key.data, "timeout")
    sel.close()
    wall = time.monotonic() - t0

    alive, alive_text = still_serves(port, path)
    latencies.sort()
    other_total = sum(other_status.values())
    metrics = {
        "requested": connections, "attempted": count, **counters,
        "other_status": {str(k): v for k, v in sorted(other_status.items())},
        "wall_s": round(wall, 3),
        "latency_p50_ms": round(percentile(latencies, 0.5) * 1000, 2) if latencies else None,
        "latency_p95_ms": round(percentile(latencies, 0.95) * 1000, 2) if latencies else None,
        "latency_max_ms": round(latencies[-1] * 1000, 2) if latencies else None,
        "still_serves": alive,
    }
    others = ", ".join(f"{k}x{v}" for k, v in sorted(other_status.items())) or "none"
    detail = (f"{counters['ok_200']}/{count} got 200 in {wall:.2f} s wall "
              f"(p50 {ms(percentile(latencies, 0.5))}, p95 {ms(percentile(latencies, 0.95))}, "
              f"max {ms(latencies[-1] if latencies else None)}); other statuses {other_total} [{others}], "
              f"refused {counters['refused']}, reset {counters['reset']}, "
              f"closed w/o status {counters['closed_no_status']}, timeout {counters['timeout']}")
    if counters["local_error"]:
        detail += f", local errors {counters['local_error']}"
    if count < connections:
        detail += f"; capped from {connections} by RLIMIT_NOFILE={fd_soft}"
    detail += f"; {alive_text}"
    return Result("flood", counters["ok_200"] > 0 and alive, detail, metrics)


# --------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------

def port_number(text: str) -> int:
    value = int(text)
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError("port must be in 1..65535")
    return value


def url_path(text: str) -> str:
    if not text.startswith("/") or any(c in text for c in " \r\n"):
        raise argparse.ArgumentTypeError("path must start with '/' and contain no spaces or line breaks")
    return text


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=f"Probe the robustness of an HTTP/1.1 server on {HOST}. "
                    "See the module docstring for what each check does.")
    parser.add_argument("--port", type=port_number, required=True, help=f"server port on {HOST}")
    parser.add_argument("--path", type=url_path, default="/health",
                        help="path answered with 200 by a healthy server (default: /health)")
    parser.add_argument("--connections", type=positive, default=1000,
                        help="simultaneous connections for the flood check (default: 1000)")
    parser.add_argument("--idle", type=positive, default=200,
                        help="stalled connections for the slowloris check (default: 200)")
    parser.add_argument("--json", action="store_true", help="also print all results as one JSON object")
    return parser.parse_args(argv)


def run_check(name: str, func, *args) -> Result:
    """Run one check; an unexpected exception becomes a FAIL, not a crash."""
    try:
        return func(*args)
    except Exception as exc:  # noqa: BLE001 - reported as the check's result
        return Result(name, False, f"probe error: {type(exc).__name__}: {exc}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    fd_soft = raise_fd_limit()
    started = time.monotonic()

    plan = [
        ("baseline", check_baseline, (args.port, args.path)),
        ("slowloris", check_slowloris, (args.port, args.path, min(args.idle, max(1, fd_soft - FD_RESERVE)))),
        ("oversized-head", check_oversized_head, (args.port, args.path)),
        ("oversized-body", check_oversized_body, (args.port, args.path)),
        ("malformed", check_malformed, (args.port, args.path)),
        ("flood", check_flood, (args.port, args.path, args.connections, fd_soft)),
        ("after", check_baseline, (args.port, args.path, "after")),
    ]
    results: list[Result] = []
    for name, func, func_args in plan:
        result = run_check(name, func, *func_args)
        results.append(result)
        print(result.line(), flush=True)

    failed = [r.name for r in results if not r.passed]
    if args.json:
        report = {
            "host": HOST,
            "port": args.port,
            "path": args.path,
            "connections": args.connections,
            "idle": args.idle,
            "rlimit_nofile_soft": fd_soft,
            "duration_s": round(time.monotonic() - started, 3),
            "passed": not failed,
            "failed": failed,
            "results": [asdict(r) for r in results],
        }
        print(json.dumps(report, indent=2, sort_keys=False), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

"""The per-run egress proxy: the sandbox's only way out, and a security boundary.

It listens on a UNIX socket that the backend binds into the sandbox (which has no route of
its own) and speaks the two proxy forms clients use: `CONNECT host:port` (TLS and anything
else tunnelled) and plain HTTP with an absolute URI. Each client connection gets exactly
one upstream, chosen by `rules.decide` on the host, connected to the very address that was
checked. Everything the client sends is hostile: request heads are size- and time-capped,
concurrent connections are capped, idle tunnels are closed, and nothing but listed
host:port pairs is ever dialled.

Every attempt, allowed or refused, becomes an event observed here, outside the sandbox,
so its provenance is `kernel/runtime`: the job cannot forge or suppress it.
"""

from __future__ import annotations

import os
import selectors
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .rules import HostRule, Resolver, decide, split_host_port, system_resolver

HEAD_CAP = 16 << 10
HEAD_SECONDS = 10.0
CONNECT_SECONDS = 10.0
IDLE_SECONDS = 120.0
MAX_CONNECTIONS = 32
EVENT_CAP = 10_000
CHUNK = 64 << 10
HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH"})
HOP_BY_HOP = frozenset({"connection", "proxy-connection", "proxy-authorization",
                        "keep-alive", "host", "te", "trailer", "upgrade"})


class Refused(Exception):
    """A request the proxy will not serve; `status` is the HTTP answer sent back."""

    def __init__(self, status: str, reason: str) -> None:
        super().__init__(reason)
        self.status = status


class Request:
    """A parsed proxy request head: where to go and what to send upstream first."""

    def __init__(self, method: str, host: str, port: int, upstream_head: bytes | None,
                 rest: bytes) -> None:
        self.method, self.host, self.port = method, host, port
        self.upstream_head = upstream_head  # None for CONNECT: a raw tunnel follows
        self.rest = rest  # bytes the client sent after the head (body or early TLS)


def read_head(conn: socket.socket) -> tuple[bytes, bytes]:
    """The request head up to the blank line, and whatever followed it in the same reads."""
    conn.settimeout(HEAD_SECONDS)
    deadline = time.monotonic() + HEAD_SECONDS
    data = b""
    while b"\r\n\r\n" not in data:
        if len(data) > HEAD_CAP:
            raise Refused("431 Request Header Fields Too Large", "request head too large")
        if time.monotonic() > deadline:
            raise Refused("408 Request Timeout", "request head not received in time")
        try:
            chunk = conn.recv(4096)
        except TimeoutError:
            raise Refused("408 Request Timeout", "request head not received in time") from None
        if not chunk:
            raise Refused("400 Bad Request", "connection closed before a full request head")
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    if len(head) > HEAD_CAP:
        raise Refused("431 Request Header Fields Too Large", "request head too large")
    return head, rest


def parse_request(head: bytes, rest: bytes) -> Request:
    """Validate a head strictly; only the forms a proxy client legitimately sends pass."""
    try:
        text = head.decode("ascii")
    except UnicodeDecodeError:
        raise Refused("400 Bad Request", "non-ASCII request head") from None
    line, *header_lines = text.split("\r\n")
    parts = line.split(" ")
    if len(parts) != 3 or parts[2] not in ("HTTP/1.0", "HTTP/1.1"):
        raise Refused("400 Bad Request", f"malformed request line {line[:100]!r}")
    method, target, version = parts
    headers = []
    for item in header_lines:
        name, sep, value = item.partition(":")
        if not sep or not name or name != name.strip() or item[:1] in (" ", "\t"):
            raise Refused("400 Bad Request", "malformed header line")
        headers.append((name, value.strip()))
    try:
        if method == "CONNECT":
            host, port = split_host_port(target, None)
            if port is None:
                raise ValueError("CONNECT needs host:port")
            return Request(method, host, port, None, rest)
        if method not in HTTP_METHODS:
            raise Refused("405 Method Not Allowed", f"method {method[:20]!r} not supported")
        if not target.startswith("http://"):
            raise Refused("400 Bad Request", "plain requests need an absolute http:// URI; "
                                              "use CONNECT for https")
        authority, slash, path = target[len("http://"):].partition("/")
        if "@" in authority:
            raise Refused("400 Bad Request", "credentials in the URI are not allowed")
        host, port = split_host_port(authority, 80)
    except ValueError as exc:
        raise Refused("400 Bad Request", str(exc)) from None
    kept = [f"{n}: {v}" for n, v in headers if n.lower() not in HOP_BY_HOP]
    lines = [f"{method} {slash}{path} {version}", f"Host: {authority}", *kept,
             "Connection: close"]
    return Request(method, host, port, ("\r\n".join(lines) + "\r\n\r\n").encode(), rest)


class EventLog:
    """Events shared by the proxy's threads; capped, with a count of what was dropped."""

    def __init__(self, cap: int = EVENT_CAP) -> None:
        self.cap, self.events, self.dropped = cap, [], 0
        self._lock = threading.Lock()

    def add(self, event: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            if len(self.events) < self.cap:
                self.events.append(event)
            else:
                self.dropped += 1
        return event

    def snapshot(self) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(event) for event in self.events]


class Proxy:
    """One run's proxy on `socket_path`; `start()` it before the sandbox, `stop()` after."""

    def __init__(self, rules: tuple[HostRule, ...], socket_path: Path,
                 resolver: Resolver | None = None,
                 connector: Callable[[str, int], socket.socket] | None = None) -> None:
        self.rules = rules
        self.socket_path = socket_path
        self.resolver = resolver or system_resolver
        self.connector = connector or _connect
        self.log = EventLog()
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._stopping = False

    def start(self) -> None:
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(str(self.socket_path))
        # Any uid may connect: the socket is only reachable through the run's own dir.
        os.chmod(self.socket_path, 0o666)
        listener.listen(MAX_CONNECTIONS)
        self._listener = listener
        self._thread = threading.Thread(target=self._accept_loop, name="detain-proxy",
                                        daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Close the listener and every live connection; the run is over."""
        self._stopping = True
        if self._listener is not None:
            try:
                self._listener.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self._listener.close()
        with self._lock:
            for sock in list(self._open):
                _shutdown(sock)
        if self._thread is not None:
            self._thread.join(timeout=2)

    @property
    def events(self) -> list[dict[str, Any]]:
        return self.log.snapshot()

    def _accept_loop(self) -> None:
        assert self._listener is not None
        while not self._stopping:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            if not self._slots.acquire(blocking=False):
                self._event("?", "", 0, False, "too many concurrent connections")
                _answer(conn, "503 Service Unavailable", "too many concurrent connections")
                conn.close()
                continue
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _track(self, sock: socket.socket, add: bool) -> None:
        with self._lock:
            (self._open.add if add else self._open.discard)(sock)

    def _event(self, method: str, host: str, port: int, allowed: bool, reason: str,
               address: str | None = None) -> dict[str, Any]:
        return self.log.add({
            "type": "network", "provenance": "kernel/runtime", "observer": "detain proxy",
            "ts": round(time.time(), 6), "method": method, "host": host[:300], "port": port,
            "allowed": allowed, "reason": reason, "address": address,
            "bytes_sent": 0, "bytes_received": 0, "seconds": 0.0})

    def _serve(self, conn: socket.socket) -> None:
        self._track(conn, True)
        upstream = None
        try:
            try:
                request = parse_request(*read_head(conn))
            except Refused as exc:
                self._event("?", "", 0, False, str(exc))
                _answer(conn, exc.status, str(exc))
                return
            verdict = decide(self.rules, request.host, request.port, self.resolver)
            if not verdict.allowed:
                self._event(request.method, request.host, request.port, False, verdict.reason)
                _answer(conn, "403 Forbidden", f"detain: {request.host}:{request.port} "
                                               f"refused: {verdict.reason}")
                return
            upstream, address, error = self._dial(verdict.addresses, request.port)
            event = self._event(request.method, request.host, request.port, upstream is not None,
                                verdict.reason if upstream else f"connect failed: {error}",
                                address)
            if upstream is None:
                _answer(conn, "502 Bad Gateway", f"detain: cannot reach {request.host}")
                return
            self._track(upstream, True)
            if request.upstream_head is None:
                conn.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
                first = request.rest
            else:
                first = request.upstream_head + request.rest
            started = time.monotonic()
            sent, received = relay(conn, upstream, first)
            event.update(bytes_sent=sent, bytes_received=received,
                         seconds=round(time.monotonic() - started, 3))
        except OSError:
            pass
        finally:
            for sock in (conn, upstream):
                if sock is not None:
                    self._track(sock, False)
                    sock.close()
            self._slots.release()

    def _dial(self, addresses: tuple[str, ...], port: int):
        error = "no address"
        for address in addresses[:3]:
            try:
                return self.connector(address, port), address, None
            except OSError as exc:
                error = exc.strerror or str(exc)
        return None, None, error


def _connect(address: str, port: int) -> socket.socket:
    return socket.create_connection((address, port), timeout=CONNECT_SECONDS)


def _answer(conn: socket.socket, status: str, reason: str) -> None:
    body = (reason.replace("\r", " ").replace("\n", " ")[:500] + "\n").encode("utf-8", "replace")
    head = (f"HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {len(body)}"
            "\r\nConnection: close\r\n\r\n").encode()
    try:
        conn.settimeout(2)
        conn.sendall(head + body)
    except OSError:
        pass


def _shutdown(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


def relay(client: socket.socket, upstream: socket.socket, first: bytes) -> tuple[int, int]:
    """Copy bytes both ways until both sides are done or the tunnel idles out."""
    for sock in (client, upstream):
        sock.settimeout(IDLE_SECONDS)
    if first:
        upstream.sendall(first)
    counts = {client: len(first), upstream: 0}
    peer = {client: upstream, upstream: client}
    open_reads = {client, upstream}
    with selectors.DefaultSelector() as sel:
        for sock in open_reads:
            sel.register(sock, selectors.EVENT_READ)
        while open_reads:
            ready = sel.select(IDLE_SECONDS)
            if not ready:
                break
            for key, _ in ready:
                sock = key.fileobj
                chunk = sock.recv(CHUNK)
                if chunk:
                    peer[sock].sendall(chunk)
                    counts[sock] += len(chunk)
                    continue
                sel.unregister(sock)
                open_reads.discard(sock)
                try:
                    peer[sock].shutdown(socket.SHUT_WR)
                except OSError:
                    pass
    return counts[client], counts[upstream]

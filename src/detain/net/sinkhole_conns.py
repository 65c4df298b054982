"""The sinkhole's TCP side: every accepted connection read, none closed unread for lack of room.

A fixed number of reader threads let a job hide a connection: keep 60 connections busy
with a byte every 0.2 s, and the one that posts a key was closed unread ("too many
connections at once"). Here one thread reads every connection without blocking, each into
a buffer of at most FIRST_BYTES, so memory is bounded by MAX_OPEN x FIRST_BYTES, and:
  * a connection is read until its first message is in: a whole HTTP request or TLS
    record, FIRST_BYTES, a pause of IDLE_WAIT after some bytes, the peer closing, or
    FIRST_WAIT in all;
  * when MAX_OPEN are open and another waits, the oldest that has had GRACE seconds is cut
    short to make room: what it sent is recorded with a note, and the cut is counted as a
    loss (it might have sent more). If none has had GRACE yet, the recorder stops
    accepting for that long: the new connection waits, established and with its bytes
    buffered, in the kernel's accept queue (BACKLOG), and is read when room frees;
  * at `drain` (the sandbox is gone) whatever is still open or queued is read without
    waiting: everything the job ever sent is in the kernel's buffers by then.
"""

from __future__ import annotations

import selectors
import socket
import time
from collections.abc import Callable
from typing import Any

from . import protocols

FIRST_BYTES = 4 << 10  # bytes of each connection or datagram the recorder reads
FIRST_WAIT = 2.0  # seconds a connection is read at most
IDLE_WAIT = 0.3  # seconds of quiet after some bytes: the first message is in
MAX_OPEN = 256  # connections read at once; more wait in the kernel's accept queue
GRACE = 0.5  # seconds a connection is read before a newer one may cut it short
BACKLOG = 4096  # the accept queue (the kernel caps it at net.core.somaxconn)
SWEEP = 0.05  # seconds between looks for connections whose time is up
HTTP_OK = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
CUT = "connections cut short to make room (they might have sent more)"

Record = Callable[..., dict[str, Any]]


class _Open:
    __slots__ = ("data", "destination", "last", "opened", "sock")

    def __init__(self, sock: socket.socket, destination: tuple, now: float) -> None:
        self.sock, self.destination = sock, destination
        self.data = bytearray()
        self.opened = self.last = now


def first_message_in(data: bytes) -> bool:
    """Whether `data` already holds the whole first message: no need to wait for more."""
    return len(data) >= FIRST_BYTES or (
        protocols.looks_like_http(data) and protocols.http_complete(data)) or (
        protocols.looks_like_tls(data) and protocols.tls_complete(data))


class Connections:
    """The open connections of one sinkhole, read by the recorder's thread alone."""

    def __init__(self, selector: selectors.BaseSelector, listeners: list[socket.socket],
                 record: Record, lose: Callable[[str], None]) -> None:
        self._sel, self._listeners = selector, listeners
        self._record, self._lose = record, lose
        self._open: dict[socket.socket, _Open] = {}  # in the order they were accepted
        self._paused_until: float | None = None
        self._next_sweep = 0.0
        for listener in listeners:
            selector.register(listener, selectors.EVENT_READ, "listen")

    def timeout(self) -> float | None:
        """How long the recorder may wait for traffic before `sweep` is due."""
        return SWEEP if self._open or self._paused_until is not None else None

    def accept(self, listener: socket.socket) -> None:
        """Accept what waits on `listener`, while there is room or a connection to cut."""
        while True:
            if len(self._open) >= MAX_OPEN and not self._cuttable(time.monotonic()):
                self._pause()
                return
            if self._take(listener) is None:
                return
            if len(self._open) > MAX_OPEN:
                self._cut_oldest(time.monotonic())

    def _take(self, listener: socket.socket) -> socket.socket | None:
        try:
            conn, _ = listener.accept()
        except OSError:  # nothing waits (EAGAIN), or the peer gave up already
            return None
        conn.setblocking(False)
        try:
            destination = conn.getsockname()
        except OSError:
            conn.close()
            return conn
        self._open[conn] = _Open(conn, destination, time.monotonic())
        self._sel.register(conn, selectors.EVENT_READ, "conn")
        return conn

    def readable(self, conn: socket.socket) -> None:
        state = self._open.get(conn)
        if state is None:
            return
        try:
            chunk = conn.recv(FIRST_BYTES - len(state.data))
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        state.data += chunk
        state.last = time.monotonic()
        if not chunk or first_message_in(bytes(state.data)):
            self._finish(state)

    def sweep(self) -> None:
        """Record the connections whose time is up, and accept again once there is room."""
        now = time.monotonic()
        if now < self._next_sweep:
            return
        self._next_sweep = now + SWEEP
        for state in list(self._open.values()):
            if now - state.opened >= FIRST_WAIT or (state.data and now - state.last
                                                      >= IDLE_WAIT):
                self._finish(state)
        if self._paused_until is not None and (len(self._open) < MAX_OPEN
                                               or now >= self._paused_until):
            self._paused_until = None
            for listener in self._listeners:
                self._sel.register(listener, selectors.EVENT_READ, "listen")

    def drain(self) -> None:
        """The sandbox is gone: read what is buffered on every open or queued connection."""
        for state in list(self._open.values()):
            self._read_buffered(state)
        for listener in self._listeners:
            while (conn := self._take(listener)) is not None:
                if conn in self._open:
                    self._read_buffered(self._open[conn])

    def _read_buffered(self, state: _Open) -> None:
        while len(state.data) < FIRST_BYTES:
            try:
                chunk = state.sock.recv(FIRST_BYTES - len(state.data))
            except OSError:
                break
            if not chunk:
                break
            state.data += chunk
        self._finish(state)

    def _cuttable(self, now: float) -> bool:
        oldest = next(iter(self._open.values()), None)
        return oldest is not None and now - oldest.opened >= GRACE

    def _cut_oldest(self, now: float) -> None:
        oldest = next(iter(self._open.values()))
        self._lose(CUT)
        self._finish(oldest, note=f"cut short after {now - oldest.opened:.1f} s to make "
                                  f"room ({MAX_OPEN} connections open at once)")

    def _pause(self) -> None:
        """Full, and nothing old enough to cut: leave the rest in the accept queue."""
        if self._paused_until is None:
            oldest = next(iter(self._open.values()))
            self._paused_until = oldest.opened + GRACE
            for listener in self._listeners:
                self._sel.unregister(listener)

    def _finish(self, state: _Open, note: str | None = None) -> None:
        del self._open[state.sock]
        self._sel.unregister(state.sock)
        event = self._record("tcp", state.destination, bytes(state.data), note=note)
        if event.get("http"):
            try:
                state.sock.send(HTTP_OK)
            except OSError:
                pass
        state.sock.close()

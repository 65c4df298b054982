"""`detain run` through a running `detain serve`: the fast path of the command line.

A new `detain` process spends most of its start-up importing itself and starting a
sandbox. When the user's own server is listening, this module hands it the command
instead: the arguments, the working directory and the caller's stdin, stdout and stderr
themselves (SCM_RIGHTS), so output goes straight to the caller's terminal or pipe. It
imports no argparse, no enum-laden `socket` or `signal` (their C halves do), and nothing
of detain's but two constants. The server runs the very same `detain run`
code on a warm spare and answers with the exit status. Interrupting the client cancels
the run: the server sees the connection end and removes the sandbox.

Request: b"DETAIN1", a 4-byte big-endian length, then NUL-separated fields (the working
directory, then the arguments), with fds 0, 1 and 2 attached to the first bytes. Answer:
4 bytes, the exit status (big-endian, signed).
"""

from __future__ import annotations

import _signal
import _socket
import os
import sys

from ..errors import EXIT_DETAIN_ERROR, EXIT_INTERRUPTED
from ..paths import server_socket

MAGIC = b"DETAIN1"


def _interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


def run_through_server(argv: list[str]) -> int | None:
    """The exit status of `detain ARGV` as run by the server, or None without a server."""
    if os.environ.get("DETAIN_NO_SERVER"):
        return None
    try:
        for fd in (0, 1, 2):
            os.fstat(fd)
    except OSError:  # a closed standard stream cannot be passed on: run here
        return None
    path = server_socket()
    try:
        sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    except OSError:
        return None
    try:
        try:
            sock.connect(path)
        except OSError:  # no server (or a stale socket): run here instead
            return None
        body = "\0".join([os.getcwd(), *argv]).encode("utf-8", "surrogateescape")
        fds = b"".join(fd.to_bytes(4, sys.byteorder) for fd in (0, 1, 2))
        head = MAGIC + len(body).to_bytes(4, "big")
        _signal.signal(_signal.SIGTERM, _interrupt)
        try:
            sock.sendmsg([head], [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, fds)])
            sock.sendall(body)
            answer = _receive_status(sock)
        except KeyboardInterrupt:
            sock.shutdown(_socket.SHUT_WR)  # the server cancels the run, then answers
            _receive_status(sock)
            print("detain: interrupted; the sandbox was removed", file=sys.stderr)
            return EXIT_INTERRUPTED
        except OSError as exc:
            print(f"detain: error: lost the connection to detain serve ({exc.strerror}); "
                  "run again, or set DETAIN_NO_SERVER=1 to run without it", file=sys.stderr)
            return EXIT_DETAIN_ERROR
    finally:
        sock.close()
    if answer is None:
        print("detain: error: detain serve ended during the run; start it again, or set "
              "DETAIN_NO_SERVER=1 to run without it", file=sys.stderr)
        return EXIT_DETAIN_ERROR
    return answer


def _receive_status(sock: _socket.socket) -> int | None:
    data = b""
    while len(data) < 4:
        chunk = sock.recv(4 - len(data))
        if not chunk:
            return None
        data += chunk
    return int.from_bytes(data, "big", signed=True)

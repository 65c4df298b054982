"""`detain serve`: keep warm sandboxes so that `detain run` starts in milliseconds.

A `detain run` started while this server listens hands it the command (cli/client.py)
instead of importing detain and starting a sandbox itself. The server runs the very same
`detain run` code, in the client's working directory, writing to the client's own stdin,
stdout and stderr, on a spare sandbox started ahead for that policy (pool.py); every run
still gets a fresh sandbox. Requests are served one at a time, in arrival order.

Only the user running the server can reach it: the socket lives in that user's state dir
(mode 0600) and each connection's peer uid is checked. Runs use the server's environment
(DETAIN_* variables, PATH for the engines), not the client's.
"""

from __future__ import annotations

import argparse
import os
import select
import selectors
import signal
import socket
import stat
import struct
import sys

from ..errors import EXIT_DETAIN_ERROR, EXIT_INTERRUPTED, DetainError
from ..paths import server_socket
from .client import MAGIC
from .service_args import add_shared, how_many

BODY_CAP = 8 << 20  # a command line is at most a few MiB (ARG_MAX)
REQUEST_TIMEOUT = 10.0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "serve", help="keep warm sandboxes so that `detain run` starts fast",
        description="Listen for `detain run` commands of this user and run each on a "
        "sandbox started ahead of it. Stops on Ctrl-C or SIGTERM, removing its spares. "
        "Set DETAIN_NO_SERVER=1 for a `detain run` that should not use it.")
    parser.add_argument("--warm", metavar="N", type=how_many("spares", 16), default=1,
                        help="spare sandboxes kept ready per policy (default 1)")
    http = parser.add_argument_group(
        "HTTP service", "With --http, serve Judge0's API and detain's own over HTTP instead "
        "(needs `pip install 'detain[service]'`; README: Run it as a service).")
    http.add_argument("--http", metavar="HOST:PORT",
                      help="listen for HTTP here, e.g. 127.0.0.1:2358 (loopback only unless "
                      "--tokens is given)")
    add_shared(http, worker=False)
    http.add_argument("--workers", metavar="N", type=how_many("runs at once"), default=2,
                      help="submissions run at once, embedded (default 2)")
    http.add_argument("--callback-allow", metavar="CIDR", action="append", default=[],
                      help="let callback_url reach this private range too (repeatable)")
    http.add_argument("--keep", metavar="SECONDS", type=float, default=86400.0,
                      help="delete results this long after they finished (default 86400)")
    parser.set_defaults(handler=execute)


def execute(args: argparse.Namespace) -> int:
    if args.http is not None:
        from ..service.server import HttpOptions, serve_http

        return serve_http(HttpOptions(args.http, args.tokens, args.policy, args.workers,
                                      args.database, args.broker,
                                      tuple(args.callback_allow), args.redeliver_after,
                                      args.keep))
    from ..host.rundir import base_dir
    from ..pool import SandboxPool
    from .parser import build_parser

    base_dir()  # created, and checked to be ours, before a socket goes in it
    parser = build_parser()
    stopping: list[int] = []

    def stop(signum: int, _frame: object) -> None:
        stopping.append(signum)  # the wakeup fd does the rest (see _serve)

    path = server_socket()
    pool = SandboxPool(warm=args.warm)
    listener = _listen(path)
    inode = os.lstat(path).st_ino
    wake_read, wake_write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        signal.set_wakeup_fd(wake_write, warn_on_full_buffer=False)
        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGTERM, stop)
        print(f"detain serve: listening on {path} ({args.warm} warm spare(s) per policy); "
              "Ctrl-C stops it", file=sys.stderr, flush=True)
        with selectors.DefaultSelector() as waiting:
            waiting.register(listener, selectors.EVENT_READ)
            waiting.register(wake_read, selectors.EVENT_READ)
            while not stopping:
                if any(key.fileobj is listener for key, _ in waiting.select()) \
                        and not stopping:
                    conn, _ = listener.accept()
                    with conn:
                        _serve(conn, parser, pool, wake_read, stopping)
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM ends it at once
        signal.set_wakeup_fd(-1)
        os.close(wake_write)
        os.close(wake_read)
        _unlisten(listener, path, inode)
        pool.close()
    print("detain serve: stopped; its spares were removed", file=sys.stderr)
    return 0


def _listen(path: str) -> socket.socket:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except OSError:
        pass
    else:
        raise DetainError(f"another detain serve is already listening on {path}; stop it "
                          "first")
    finally:
        probe.close()
    try:
        if stat.S_ISSOCK(os.lstat(path).st_mode):
            os.unlink(path)  # a stale socket left by a server that was killed
    except FileNotFoundError:
        pass
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o177)
    try:
        listener.bind(path)
    except OSError as exc:
        listener.close()
        raise DetainError(f"cannot listen on {path}: {exc.strerror}; set DETAIN_STATE_DIR "
                          "to a directory of your own") from None
    finally:
        os.umask(old_umask)
    listener.listen(16)
    return listener


def _unlisten(listener: socket.socket, path: str, inode: int) -> None:
    """Remove the socket, unless another server has replaced it meanwhile."""
    listener.close()
    try:
        if os.lstat(path).st_ino == inode:
            os.unlink(path)
    except OSError:
        pass


def _serve(conn: socket.socket, parser: argparse.ArgumentParser, pool, wake: int,
           stopping: list[int]) -> None:
    """One request: check who asks, read it, run it, answer with the exit status.

    A signal never raises in here: an exception thrown at an arbitrary point of a run
    could leave a Sandbox's bookkeeping half-done (a spare counted but never started),
    and stopping would then wait for it forever. The run is cancelled instead, the way a
    client that hangs up cancels it: its cancel fd is an epoll set that becomes ready when
    the client goes away or a signal writes to the server's wakeup pipe."""
    _, uid, _ = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                        struct.calcsize("3i")))
    if uid != os.geteuid():
        return
    fds: list[int] = []
    try:
        conn.settimeout(REQUEST_TIMEOUT)
        head, fds, _, _ = socket.recv_fds(conn, len(MAGIC) + 4, 3)
        if len(fds) != 3 or len(head) != len(MAGIC) + 4 or not head.startswith(MAGIC):
            return
        size = int.from_bytes(head[len(MAGIC):], "big")
        if size > BODY_CAP:
            return
        body = b""
        while len(body) < size:
            chunk = conn.recv(min(size - len(body), 1 << 20))
            if not chunk:
                return
            body += chunk
        conn.settimeout(None)
        cwd, *argv = body.decode("utf-8", "surrogateescape").split("\0")
        with select.epoll() as cancel:
            cancel.register(conn.fileno(), select.EPOLLIN | select.EPOLLRDHUP)
            cancel.register(wake, select.EPOLLIN)
            status = _run(parser, pool, cwd, argv, fds, cancel.fileno())
        if stopping:
            os.write(fds[2], b"detain: error: detain serve was stopped during this run, "
                             b"which was cancelled; run it again\n")
            status = EXIT_INTERRUPTED
        conn.sendall(status.to_bytes(4, "big", signed=True))
    except OSError:
        pass  # the client went away: its run was cancelled, nobody waits for an answer
    finally:
        for fd in fds:
            os.close(fd)


def _run(parser: argparse.ArgumentParser, pool, cwd: str, argv: list[str], fds: list[int],
         cancel: int) -> int:
    """`detain ARGV` as the client would have run it: its cwd, its stdin/stdout/stderr."""
    from .main import dispatch

    here = os.getcwd()
    saved = sys.stdin, sys.stdout, sys.stderr
    streams = [open(fds[0], encoding="utf-8", closefd=False),
               open(fds[1], "w", encoding="utf-8", errors="backslashreplace", closefd=False),
               open(fds[2], "w", encoding="utf-8", errors="backslashreplace", closefd=False)]
    sys.stdin, sys.stdout, sys.stderr = streams
    try:
        try:
            os.chdir(cwd)
        except OSError as exc:
            _say(f"detain: error: {cwd}: {exc.strerror}; run from a directory that exists")
            return EXIT_DETAIN_ERROR
        try:
            args = parser.parse_args(argv)
        except SystemExit as exc:  # a usage error or --help, already printed
            return exc.code if isinstance(exc.code, int) else EXIT_DETAIN_ERROR
        args.pool, args.cancel = pool, cancel
        return dispatch(parser, args)
    except Exception as exc:  # a bug in detain: the server keeps serving
        _say(f"detain: error: detain serve failed on this command ({type(exc).__name__}: "
             f"{exc}); set DETAIN_NO_SERVER=1 to run it without the server")
        return EXIT_DETAIN_ERROR
    finally:
        for stream in streams:
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        sys.stdin, sys.stdout, sys.stderr = saved
        os.chdir(here)


def _say(line: str) -> None:
    try:
        print(line, file=sys.stderr, flush=True)
    except (OSError, ValueError):
        pass

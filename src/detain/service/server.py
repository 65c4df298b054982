"""`detain serve --http HOST:PORT`: put the pieces together and serve until stopped.

Embedded by default (SQLite in the state dir, sandboxes in this process); with `--broker`
and `--database` the API only accepts and stores, and `detain worker` processes run the
submissions (service/worker.py).
"""

from __future__ import annotations

import ipaddress
import resource
import signal
import socket
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import DetainError


@dataclass
class HttpOptions:
    listen: str
    tokens: Path | None = None
    policy: Path | None = None
    workers: int = 2
    database: str | None = None
    broker: str | None = None
    callback_allow: tuple[str, ...] = ()
    redeliver: float = 120.0
    keep: float = 86400.0


def split_listen(listen: str) -> tuple[str, int]:
    host, sep, port = listen.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise DetainError(f"--http: expected HOST:PORT such as 127.0.0.1:2358, got {listen!r}")
    return host, int(port)


def is_loopback(host: str) -> bool:
    try:
        infos = socket.getaddrinfo(host, None)
    except socket.gaierror:
        raise DetainError(f"--http: cannot resolve {host!r}") from None
    return all(ipaddress.ip_address(info[4][0].split("%", 1)[0]).is_loopback for info in infos)


def networks(values: tuple[str, ...]) -> tuple:
    try:
        return tuple(ipaddress.ip_network(v, strict=False) for v in values)
    except ValueError as exc:
        raise DetainError(f"--callback-allow: {exc}") from None


@dataclass
class Parts:
    store: Any
    tokens: Any


def service_parts(tokens: Path | None, policy: Path | None, database: str | None) -> Parts:
    """The store and the token table, shared by the API and every worker."""
    try:
        from .store import Store
        from .tokens import Tokens
    except ImportError as exc:
        raise DetainError(f"the HTTP service needs its extra packages ({exc.name} is missing): "
                          "pip install 'detain[service]'") from None
    from ..config import load_policy
    from ..host.rundir import base_dir

    table = Tokens(load_policy(policy), tokens)
    try:
        store = Store(database or f"sqlite:///{base_dir() / 'service.db'}")
    except ImportError as exc:
        raise DetainError(f"the database driver {exc.name!r} is missing: pip install "
                          "'psycopg[binary]' for PostgreSQL") from None
    except Exception as exc:  # SQLAlchemy's errors: a URL or a server that does not answer
        raise DetainError(f"cannot open the store {_redact(database or 'sqlite')}: "
                          f"{str(exc).splitlines()[0][:200]}") from None
    return Parts(store, table)


def serve_http(options: HttpOptions) -> int:
    host, port = split_listen(options.listen)
    if options.tokens is None and not is_loopback(host):
        raise DetainError(f"--http {options.listen}: without --tokens FILE the service listens "
                          "on loopback only (127.0.0.1 or ::1); give every client a token to "
                          "listen elsewhere")
    if options.broker is not None and options.database is None:
        raise DetainError("--broker needs --database (the API and the workers share the store)")
    allowed = networks(options.callback_allow)
    parts = service_parts(options.tokens, options.policy, options.database)
    import uvicorn

    from .app import Service
    from .executor import Executor, Metrics

    metrics = Metrics()
    if options.broker is None:
        from .embedded import Embedded

        dispatcher = Embedded(Executor(parts.store, parts.tokens, workers=options.workers,
                                       callbacks_allowed=allowed, metrics=metrics), allowed)
        mode = f"embedded, {options.workers} worker(s)"
    else:
        from .worker import Distributed

        dispatcher = Distributed(parts.store, options.broker, allowed, options.redeliver)
        mode = f"distributed through {_redact(options.broker)}"
    app = Service(parts.store, parts.tokens, dispatcher, metrics).app()
    print(f"detain serve: HTTP on http://{options.listen} ({mode}; store "
          f"{_redact(str(parts.store.engine.url))}); Ctrl-C stops it", file=sys.stderr,
          flush=True)
    connections = _raise_open_files()
    server = uvicorn.Server(uvicorn.Config(
        app, host=host, port=port, log_level="critical", access_log=False, lifespan="off",
        timeout_graceful_shutdown=5, http=_header_deadline(), timeout_keep_alive=5,
        limit_concurrency=connections, h11_max_incomplete_event_size=64 << 10))
    server.capture_signals = lambda: _stopping(server)  # type: ignore[method-assign]
    forgetting = threading.Event()
    threading.Thread(target=_forget, args=(parts.store, options.keep, forgetting),
                     daemon=True, name="detain-forget").start()
    try:
        server.run()
    finally:
        forgetting.set()
        dispatcher.close()
        parts.store.close()
    print("detain serve: stopped", file=sys.stderr)
    return 0


HEADER_SECONDS = 10.0  # a client has this long to send a request's headers


def _header_deadline():
    """uvicorn's HTTP protocol, with a deadline for a new connection's first request: by
    default a connection that trickles a header line every few seconds is held forever,
    and a few thousand such (slowloris) took every file descriptor. The keep-alive timer,
    which the protocol already cancels when a request arrives, is armed on connect."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class HeaderDeadline(H11Protocol):
        def connection_made(self, transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self.timeout_keep_alive_task = self.loop.call_later(
                HEADER_SECONDS, self.timeout_keep_alive_handler)
    return HeaderDeadline


def _raise_open_files() -> int:
    """Open files up to the hard limit; connections and requests served at once are held
    to a quarter of it (uvicorn answers the rest 503), the rest for runs and the store."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard if hard != resource.RLIM_INFINITY else max(soft, 65536)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    except (ValueError, OSError):
        wanted = soft
    return max(64, min(4096, wanted // 4))


def _forget(store, keep: float, stop: threading.Event) -> None:
    """Results older than `keep` seconds are deleted, once a minute."""
    while not stop.wait(60.0):
        try:
            store.forget(keep)
        except Exception:  # a store that is down now is retried next minute
            pass


@contextmanager
def _stopping(server) -> Iterator[None]:
    """SIGINT and SIGTERM stop the server gracefully, and that is all: uvicorn's own
    handling re-raises the signal afterwards, which would end detain with 130."""
    def stop(_signum: int, _frame: object) -> None:
        server.should_exit = True

    previous = {number: signal.signal(number, stop) for number in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def _redact(url: str) -> str:
    """A URL as printed: without its password."""
    scheme, sep, rest = url.partition("://")
    credentials, at, place = rest.rpartition("@")
    if not sep or not at:
        return url
    user = credentials.split(":", 1)[0]
    return f"{scheme}://{user}:***@{place}" if ":" in credentials else url


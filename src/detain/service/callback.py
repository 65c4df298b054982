"""Judge0's `callback_url`: the finished submission PUT to a URL the submitter chose.

A submitter must not turn the server into a way into its own network (SSRF): the host is
resolved once, every address it resolves to must be a public one (not loopback, private,
link-local, multicast, reserved or the cloud metadata range) unless the operator allowed
that range with `--callback-allow CIDR`, and the connection goes to the address that was
checked (pinned), so a DNS answer that changes between check and use changes nothing.
No redirects are followed. Tries and timeout are Judge0's: 3 tries, 5 s each.
"""

from __future__ import annotations

import http.client
import ipaddress
import json
import socket
import ssl
import time
import urllib.parse
from typing import Any

TRIES = 3
TIMEOUT = 5.0

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def check(url: str, allowed: tuple[Network, ...] = ()) -> str | None:
    """Why this URL may not be called back (None: it may), without connecting."""
    try:
        _target(url, allowed)
    except ValueError as exc:
        return str(exc)
    return None


def _target(url: str, allowed: tuple[Network, ...]) -> tuple[str, str, int, str, str]:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("callback_url must be an http:// or https:// URL with a host")
    if parts.username or parts.password:
        raise ValueError("callback_url must not carry credentials")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        infos = socket.getaddrinfo(parts.hostname, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError):
        raise ValueError(f"callback_url host {parts.hostname!r} does not resolve") from None
    addresses = {info[4][0] for info in infos}
    for address in addresses:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
        if not (ip.is_global or any(ip in net for net in allowed)):
            raise ValueError(f"callback_url host {parts.hostname!r} resolves to {ip}, "
                             "which is not a public address")
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    return parts.scheme, parts.hostname, port, sorted(addresses)[0], path


def deliver(url: str, body: dict[str, Any], allowed: tuple[Network, ...] = ()) -> str | None:
    """PUT `body` as JSON; None when delivered, else why not (after every try)."""
    try:
        scheme, host, port, address, path = _target(url, allowed)
    except ValueError as exc:
        return str(exc)
    payload = json.dumps(body).encode()
    error = "not tried"
    for attempt in range(TRIES):
        try:
            conn = _connection(scheme, host, port, address)
            try:
                conn.request("PUT", path, body=payload, headers={
                    "Host": host if port in (80, 443) else f"{host}:{port}",
                    "Content-Type": "application/json"})
                status = conn.getresponse().status
            finally:
                conn.close()
            if status < 300:
                return None
            error = f"HTTP {status}"
        except (OSError, http.client.HTTPException) as exc:
            error = str(exc) or type(exc).__name__
        time.sleep(0.5 * (attempt + 1))
    return f"callback to {host} failed: {error}"


def _connection(scheme: str, host: str, port: int, address: str) -> http.client.HTTPConnection:
    """A connection to the checked address, whatever the name resolves to by now."""
    if scheme == "http":
        return http.client.HTTPConnection(address, port, timeout=TIMEOUT)
    conn = http.client.HTTPSConnection(address, port, timeout=TIMEOUT)
    raw = socket.create_connection((address, port), TIMEOUT)
    conn.sock = ssl.create_default_context().wrap_socket(raw, server_hostname=host)
    return conn

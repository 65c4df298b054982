"""Inside the sandbox: 127.0.0.1:PORT forwarded to the host proxy's UNIX socket (stdlib only).

The sandbox has its own network namespace with nothing but loopback, so ordinary clients
(pip, urllib, requests) cannot reach the UNIX socket the host binds in. The launcher starts
this forwarder in a daemon thread before anything untrusted runs and points the
HTTP(S)_PROXY variables at it. It decides nothing: every policy check happens in the host
proxy, so a job that talks to the socket directly gains nothing. One thread serves every
connection through a selector, so the job's process limit is not spent on threads.
"""

import os
import selectors
import socket
import threading

CHUNK = 65536
SEND_SECONDS = 30


def _close(sel, pairs, sock):
    peer = pairs.pop(sock, None)
    for item in (sock, peer):
        if item is None:
            continue
        pairs.pop(item, None)
        try:
            sel.unregister(item)
        except (KeyError, ValueError):
            pass
        item.close()


def _accept(sel, pairs, listener, target):
    client, _ = listener.accept()
    upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        upstream.connect(target)
    except OSError:
        client.close()
        upstream.close()
        return
    for sock in (client, upstream):
        sock.settimeout(SEND_SECONDS)
        sel.register(sock, selectors.EVENT_READ)
    pairs[client], pairs[upstream] = upstream, client


def serve(listener, target):
    sel = selectors.DefaultSelector()
    sel.register(listener, selectors.EVENT_READ)
    pairs = {}
    half_closed = set()
    while True:
        for key, _ in sel.select():
            sock = key.fileobj
            if sock is listener:
                _accept(sel, pairs, listener, target)
                continue
            peer = pairs.get(sock)
            try:
                chunk = sock.recv(CHUNK)
                if chunk and peer is not None:
                    peer.sendall(chunk)
                    continue
            except OSError:
                _close(sel, pairs, sock)
                continue
            sel.unregister(sock)
            half_closed.add(sock)
            if peer is None or peer in half_closed:
                half_closed.discard(peer)
                half_closed.discard(sock)
                _close(sel, pairs, sock)
                continue
            try:
                peer.shutdown(socket.SHUT_WR)
            except OSError:
                pass


def start(spec):
    """`spec` is PORT:SOCKET_PATH; returns the proxy URL for the job's environment."""
    port, _, target = spec.partition(":")
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", int(port)))
    listener.listen(64)
    thread = threading.Thread(target=serve, args=(listener, target), name="detain-forward",
                              daemon=True)
    thread.start()
    url = "http://127.0.0.1:%d" % int(port)
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
        os.environ[name] = url
    return url

"""The network allow-list: only listed host:port pairs are reachable, through detain's proxy.

Every server here is a loopback listener this test starts; the package index is contacted
only in the one test that says so, and only when the host itself can reach it.
"""

from __future__ import annotations

import http.server
import socket
import threading
import urllib.request

import pytest

import detain
from conftest import require
from detain.errors import DetainError, PolicyError
from detain.net import session
from detain.net.proxy import HEAD_CAP, Proxy, Refused, parse_request
from detain.net.rules import HostRule, decide, parse_rules


class Server:
    """A loopback HTTP server that counts every TCP connection it accepts."""

    def __init__(self) -> None:
        self.connections = 0
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                body = f"hello {self.headers.get('Host')}".encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        class Counting(http.server.ThreadingHTTPServer):
            def get_request(self):
                outer.connections += 1
                return super().get_request()

        self.httpd = Counting(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    srv = Server()
    yield srv
    srv.close()


@pytest.fixture
def canary():
    srv = Server()
    yield srv
    srv.close()


def sandboxed(code: str, allow: list[str]):
    require("bwrap")
    return detain.run(code=code, backend="bwrap", allow_host=allow, timeout=30)


def proxy_events(result) -> list[dict]:
    return [e for e in result.behaviour.get("events", []) if e["event"] == "proxy.connect"]


FETCH = """
import sys, urllib.request
for url in sys.argv[1:]:
    try:
        print("OK", url, urllib.request.urlopen(url, timeout=10).read().decode())
    except Exception as exc:
        print("NO", url, exc)
"""


def fetch(urls: list[str], allow: list[str]):
    require("bwrap")
    return detain.run(None, *urls, code=FETCH, backend="bwrap", allow_host=allow, timeout=30)


def test_listed_loopback_server_is_reachable_and_reported(server):
    url = f"http://127.0.0.1:{server.port}/x"
    result = fetch([url], [f"127.0.0.1:{server.port}"])
    assert result.status == 0, result.stderr
    assert f"OK {url} hello 127.0.0.1:{server.port}" in result.stdout.decode()
    (event,) = proxy_events(result)
    assert event["provenance"] == "kernel/runtime" and event["detail"]["allowed"] is True
    assert event["detail"]["address"] == "127.0.0.1" and event["detail"]["bytes_received"] > 0
    assert result.behaviour["egress"]["allowed"] == 1
    assert "allow-list" in result.assurance["network"]


def test_connect_tunnel_to_listed_port(server):
    code = f"""
import socket
s = socket.create_connection(("127.0.0.1", 3128), timeout=10)
s.sendall(b"CONNECT 127.0.0.1:{server.port} HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n")
print(s.recv(200).split(b"\\r\\n")[0].decode())
s.sendall(b"GET / HTTP/1.0\\r\\nHost: tunnelled\\r\\n\\r\\n")
data = b""
while chunk := s.recv(4096):
    data += chunk
print(data.rsplit(b"\\r\\n", 1)[-1].decode())
"""
    result = sandboxed(code, [f"127.0.0.1:{server.port}"])
    assert result.status == 0, result.stderr
    assert result.stdout.decode().splitlines() == ["HTTP/1.1 200 Connection established",
                                                   "hello tunnelled"]
    assert [e["detail"]["method"] for e in proxy_events(result)] == ["CONNECT"]


def test_unlisted_hosts_ports_and_ip_literals_are_refused(server, canary):
    urls = [f"http://127.0.0.1:{canary.port}/", f"http://localhost:{canary.port}/",
            "http://2130706433/", f"http://[::1]:{canary.port}/", "http://example.com/"]
    result = fetch(urls, [f"127.0.0.1:{server.port}"])
    assert result.status == 0, result.stderr
    lines = result.stdout.decode().splitlines()
    assert all(line.startswith("NO ") and "403" in line for line in lines), lines
    events = proxy_events(result)
    assert len(events) == len(urls)
    assert all(e["detail"]["allowed"] is False and e["severity"] == "high" for e in events)
    assert result.behaviour["egress"]["refused"] == len(urls)
    assert canary.connections == 0 and server.connections == 0


def test_direct_connections_have_no_route(canary):
    code = f"""
import socket
try:
    socket.create_connection(("127.0.0.1", {canary.port}), timeout=3)
    print("CONNECTED")
except OSError as exc:
    print("blocked", exc.errno)
"""
    result = sandboxed(code, [f"127.0.0.1:{canary.port}"])
    assert b"blocked" in result.stdout and canary.connections == 0
    assert proxy_events(result) == []


def test_dns_rebinding_to_loopback_is_refused(server, canary, monkeypatch):
    """An allowed *name* that resolves to loopback reaches nothing unless the address is
    listed too; the proxy connects to exactly the address it checked."""
    answers = {"rebind.test": ["127.0.0.1"], "pinned.test": ["127.0.0.1"]}
    monkeypatch.setattr(session, "resolver", lambda host, port: answers[host])
    urls = [f"http://rebind.test:{canary.port}/", f"http://pinned.test:{server.port}/"]
    result = fetch(urls, [f"rebind.test:{canary.port}", f"pinned.test:{server.port}",
                          f"127.0.0.1:{server.port}"])
    out = result.stdout.decode().splitlines()
    assert out[0].startswith(f"NO {urls[0]}") and "403" in out[0]
    assert out[1] == f"OK {urls[1]} hello pinned.test:{server.port}"
    refused, allowed = proxy_events(result)
    assert "rebinding" in refused["detail"]["reason"]
    assert allowed["detail"]["address"] == "127.0.0.1"
    assert canary.connections == 0


def test_allow_list_needs_its_own_network_namespace():
    require("process")
    with pytest.raises(DetainError, match="own network namespace"):
        detain.run(code="pass", backend="process", min_level=1, allow_host=["pypi.org"])


def test_policy_vocabulary():
    policy = detain.Policy().merge({"network": {"allow": ["pypi.org", "*.example.org:8443"]}},
                                   "test")
    assert policy.network == "allow-list"
    assert policy.describe()["network"] == {"allow": ["pypi.org", "*.example.org:8443"]}
    for bad in ("*", "*.org", "127.1", "0x7f.0.0.1", "host:0", "a b"):
        with pytest.raises(PolicyError):
            detain.Policy().merge({"allow_host": [bad]}, "test")
    with pytest.raises(PolicyError, match="only network"):
        detain.Policy().merge({"network": "everything"}, "test")


def test_rules_without_port_mean_web_ports_only():
    rules = parse_rules(["files.example.org", "*.cdn.example.org:8443"])
    public = lambda host, port: ["93.184.215.14"]  # noqa: E731
    assert decide(rules, "files.example.org", 443, public).allowed
    assert not decide(rules, "files.example.org", 22, public).allowed
    assert decide(rules, "a.cdn.example.org", 8443, public).allowed
    assert not decide(rules, "cdn.example.org", 8443, public).allowed
    assert not decide(rules, "evil-cdn.example.org", 8443, public).allowed
    private = lambda host, port: ["10.1.2.3", "169.254.169.254"]  # noqa: E731
    assert not decide(rules, "files.example.org", 443, private).allowed
    mapped = lambda host, port: ["::ffff:127.0.0.1"]  # noqa: E731
    assert not decide(rules, "files.example.org", 443, mapped).allowed
    assert HostRule.parse("[::1]:80").address is not None


@pytest.mark.parametrize("head, status", [
    (b"GET https://x/ HTTP/1.1", "400"),
    (b"GET http://user:pw@x/ HTTP/1.1", "400"),
    (b"BREW http://x/ HTTP/1.1", "405"),
    (b"CONNECT x HTTP/1.1", "400"),
    (b"GET http://x/ HTTP/2", "400"),
    (b"GET http://x/ HTTP/1.1\r\n folded: header", "400"),
])
def test_malformed_requests_are_refused(head, status):
    with pytest.raises(Refused) as caught:
        parse_request(head, b"")
    assert caught.value.status.startswith(status)


def test_plain_http_is_rewritten_with_one_upstream_and_no_proxy_headers():
    request = parse_request(b"GET http://h.example:8080/p?q HTTP/1.1\r\nHost: other\r\n"
                            b"Proxy-Authorization: x\r\nConnection: keep-alive\r\nA: b", b"")
    assert (request.host, request.port) == ("h.example", 8080)
    assert request.upstream_head == (b"GET /p?q HTTP/1.1\r\nHost: h.example:8080\r\nA: b\r\n"
                                     b"Connection: close\r\n\r\n")


def test_oversized_heads_are_refused_and_recorded(tmp_path):
    proxy = Proxy(parse_rules(["example.org"]), tmp_path / "p.sock")
    proxy.start()
    try:
        with socket.socket(socket.AF_UNIX) as client:
            client.connect(str(tmp_path / "p.sock"))
            try:
                client.sendall(b"GET http://example.org/ HTTP/1.1\r\nX: " + b"a" * HEAD_CAP * 2)
            except OSError:
                pass
            assert client.recv(100).startswith(b"HTTP/1.1 431")
    finally:
        proxy.stop()
    (event,) = proxy.events
    assert event["allowed"] is False and "too large" in event["reason"]


def _index_reachable() -> str | None:
    try:
        urllib.request.urlopen("https://pypi.org/simple/pip/", timeout=5).close()
    except OSError as exc:
        return f"the host cannot reach https://pypi.org ({exc})"
    return None


def test_package_index_through_the_allow_list():
    reason = _index_reachable()
    if reason:
        pytest.skip(reason)
    from detain.package.index import pin_hosts

    allow = pin_hosts(["pypi.org"])
    code = ("import urllib.request\n"
            "print(urllib.request.urlopen('https://pypi.org/simple/six/', timeout=20).status)")
    result = sandboxed(code, allow)
    assert result.stdout.strip() == b"200", result.stderr
    assert [e["detail"]["allowed"] for e in proxy_events(result)] == [True]

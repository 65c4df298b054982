"""The sinkhole network: nothing leaves, and everything that tried to is on record.

A job under `--network sinkhole` gets a network namespace detain made (as root) before
the sandbox starts, owned by the host's user namespace, so nothing inside can change it:
  * `lo` is up and `local 0.0.0.0/0` / `local ::/0` routes make every address local, so
    no packet has anywhere to go but this namespace (there is no other interface);
  * an nftables table sends every TCP and UDP packet, to any address and port, to the
    recorder's listening sockets with TPROXY. TPROXY rewrites nothing, so an accepted
    connection's own address *is* the destination the job dialled, and a datagram's
    original destination comes with it (IP_RECVORIGDSTADDR). Two exceptions: a loopback
    destination where a socket of the job's own already listens (its test servers, and
    the launcher's forwarder to detain's allow-list proxy) is delivered to that socket,
    and the recorder's own DNS answers (SO_MARK, which needs CAP_NET_ADMIN) pass;
  * /etc/resolv.conf inside names a sinkhole address, and every query, wherever it is
    sent, is answered: A with 10.66.x.y and AAAA with fd00:6466:6574::x:y, one address
    per name, so a later connection to it names the host the job looked up. Never
    NXDOMAIN: code that gives up on a failed lookup would show nothing. Past MAX_NAMES
    names every further one gets the one shared OVERFLOW address (still an answer).

The recorder is a thread of detain's own process: outside the sandbox's pid and mount
namespaces, running as root while the job runs as the run's uid, so the job can neither
signal nor read it. Its sockets were made in the namespace (a thread `setns`es into it;
sockets stay in the namespace they were made in). It keeps the destination, the name
that resolved to it, the first bytes (capped), an HTTP request's method, Host, path and
body excerpt, and a TLS ClientHello's SNI; it answers HTTP with an empty 200 and closes
anything else once the first bytes are in (net/sinkhole_conns.py: no connection is refused
for lack of room). Everything is capped, per kind and per destination, with a reserve for
evidence (net/sinkhole_log.py); what is not kept, and every datagram the kernel dropped
because the recorder's queue was full, is counted.

Nothing survives the run: the namespace has no name in the file system (no `ip netns`
mount), only detain's fd and the sandbox's processes hold it, so the kernel removes it,
its routes and its nftables table once both are gone; `stop` closes the fd, the sockets
and joins the thread. Measured on a 2-core VM: making the namespace (two `ip` calls and
one `nft -f`) costs about 15 ms per run.
"""

from __future__ import annotations

import ipaddress
import os
import selectors
import shutil
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Callable
from typing import Any

from ..errors import DetainError
from ..host import privileges
from . import protocols
from .sinkhole_conns import BACKLOG, FIRST_BYTES, Connections
from .sinkhole_events import canonical
from .sinkhole_log import RecordLog

MAX_NAMES = 65_000  # names with an address of their own (and kept for attribution)
NAME_NET = ipaddress.ip_network("10.66.0.0/16")
NAME_NET6 = ipaddress.ip_network("fd00:6466:6574::/96")
OVERFLOW = 65_534  # the index of the address every name past MAX_NAMES is answered with
UDP_BUFFER = 4 << 20  # the datagram sockets' receive queue (SO_RCVBUFFORCE), bytes
UDP_BATCH = 64  # datagrams read per wake-up before connections get a turn
KERNEL_DROPS = "UDP datagrams the kernel dropped (the recorder's queue was full)"
SO_RCVBUFFORCE, SO_MEMINFO, SK_MEMINFO_DROPS = 33, 55, 8  # Linux values Python lacks
RESOLVER = "10.66.0.53"  # the resolv.conf nameserver; any address reaches the recorder
MARK = 0x6466  # the recorder's own answers, which the TPROXY rule lets through
IP_TRANSPARENT, IP_RECVORIGDSTADDR = 19, 20
IPV6_TRANSPARENT, IPV6_RECVORIGDSTADDR = 75, 74
RESOLV_CONF = f"nameserver {RESOLVER}\noptions timeout:2 attempts:1\n"
HOSTS = "127.0.0.1 localhost\n::1 localhost ip6-localhost ip6-loopback\n"


class NameTable:
    """Each name the job looked up gets its own sinkhole address, so a connection to that
    address can be reported by name."""

    def __init__(self) -> None:
        self._index: dict[str, int] = {}
        self._names: list[str] = []
        self._lock = threading.Lock()
        self.overflow = 0  # answers given with the shared OVERFLOW address

    def address(self, name: str, family: int) -> str:
        """The sinkhole address for `name`; once MAX_NAMES have one, the shared OVERFLOW
        address, which names no one (a connection to it is reported by address)."""
        with self._lock:
            index = self._index.get(name)
            if index is None:
                if len(self._names) >= MAX_NAMES:
                    self.overflow += 1
                    index = OVERFLOW
                else:
                    self._names.append(name)
                    index = self._index[name] = len(self._names)
        net = NAME_NET if family == socket.AF_INET else NAME_NET6
        return str(net[index])

    def name(self, address: str) -> str | None:
        """The name a sinkhole address was handed out for, or None for any other address."""
        try:
            ip = ipaddress.ip_address(canonical(address))
        except ValueError:
            return None
        net = NAME_NET if ip.version == 4 else NAME_NET6
        if ip not in net:
            return None
        index = int(ip) - int(net.network_address)
        with self._lock:
            return self._names[index - 1] if 0 < index <= len(self._names) else None


def available() -> str | None:
    """Why the sinkhole cannot run here, or None when it can."""
    if not privileges.is_root():
        return ("--network sinkhole needs detain to run as root (it makes a network "
                "namespace and nftables rules); run as root or use --network none")
    missing = [tool for tool in ("ip", "nft") if shutil.which(tool) is None]
    if missing:
        return (f"--network sinkhole needs {' and '.join(missing)}; install iproute2 and "
                "nftables (scripts/install-system-deps.sh)")
    return None


def supported(backend: str) -> bool:
    """Whether runs on `backend` can have a sinkhole here (the default for vetting)."""
    from ..backends import load

    return getattr(load(backend), "sinkhole_network", False) and available() is None


def _run(argv: list[str], stdin: str | None = None) -> None:
    done = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=10,
                          check=False)
    if done.returncode != 0:
        raise DetainError(f"sinkhole setup: {' '.join(argv[:4])} failed: "
                          f"{done.stderr.strip()[:300]}")


def _ruleset(port: int, udp_port: int) -> str:
    return f"""table inet detain_sinkhole {{
  chain prerouting {{
    type filter hook prerouting priority mangle; policy accept;
    meta mark {MARK} accept
    ip daddr 127.0.0.0/8 socket transparent 0 accept
    ip6 daddr ::1 socket transparent 0 accept
    meta l4proto tcp tproxy to :{port} accept
    meta l4proto udp tproxy to :{udp_port} accept
  }}
}}
"""


def _listener(family: int, kind: int, port: int) -> socket.socket:
    sock = socket.socket(family, kind)
    try:
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.setsockopt(socket.IPPROTO_IPV6, IPV6_TRANSPARENT, 1)
        else:
            sock.setsockopt(socket.SOL_IP, IP_TRANSPARENT, 1)
        if kind == socket.SOCK_DGRAM:
            level, option = ((socket.IPPROTO_IPV6, IPV6_RECVORIGDSTADDR)
                             if family == socket.AF_INET6 else (socket.SOL_IP,
                                                                IP_RECVORIGDSTADDR))
            sock.setsockopt(level, option, 1)
            sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, UDP_BUFFER)
        # Every address, in the sinkhole's own namespace: no interface leads anywhere else.
        sock.bind(("::" if family == socket.AF_INET6 else "0.0.0.0", port))  # noqa: S104
        if kind == socket.SOCK_STREAM:
            sock.listen(BACKLOG)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def _in_new_namespace(build: Callable[[], Any]) -> Any:
    """`build()` run on a thread of its own that first unshares a fresh network namespace:
    detain's other threads (and the host) stay where they are."""
    box: dict[str, Any] = {}

    def body() -> None:
        try:
            privileges.unshare_netns()
            box["value"] = build()
        except BaseException as exc:  # handed to the caller's thread
            box["error"] = exc
    thread = threading.Thread(target=body, name="detain-sinkhole-setup")
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["value"]


class Sinkhole:
    """One run's sinkhole: `start()` before the sandbox, which joins `netns_fd`; `stop()`."""

    def __init__(self) -> None:
        self.log = RecordLog()
        self.names = NameTable()
        self.netns_fd: int | None = None
        self.ipv6 = False
        self._sockets: list[socket.socket] = []
        self._wake_r, self._wake_w = -1, -1
        self._thread: threading.Thread | None = None

    # -- lifecycle --------------------------------------------------------------------

    def start(self) -> None:
        reason = available()
        if reason:
            raise DetainError(reason)
        self.netns_fd, self._sockets, self.ipv6 = _in_new_namespace(self._build)
        self._wake_r, self._wake_w = os.pipe()
        self._thread = threading.Thread(target=self._serve, name="detain-sinkhole",
                                        daemon=True)
        self._thread.start()

    def _build(self) -> tuple[int, list[socket.socket], bool]:
        """Runs inside the new namespace: routes, listeners, then the TPROXY rules."""
        fd = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        sockets: list[socket.socket] = []
        try:
            _run(["ip", "link", "set", "lo", "up"])
            _run(["ip", "route", "add", "local", "0.0.0.0/0", "dev", "lo"])
            tcp = _listener(socket.AF_INET, socket.SOCK_STREAM, 0)
            udp = _listener(socket.AF_INET, socket.SOCK_DGRAM, 0)
            sockets += [tcp, udp]
            ports = (tcp.getsockname()[1], udp.getsockname()[1])
            ipv6 = socket.has_ipv6 and os.path.exists("/proc/sys/net/ipv6")
            if ipv6:
                _run(["ip", "-6", "route", "add", "local", "::/0", "dev", "lo"])
                sockets += [_listener(socket.AF_INET6, socket.SOCK_STREAM, ports[0]),
                            _listener(socket.AF_INET6, socket.SOCK_DGRAM, ports[1])]
            _run(["nft", "-f", "-"], _ruleset(*ports))
        except BaseException:
            for sock in sockets:
                sock.close()
            os.close(fd)
            raise
        return fd, sockets, ipv6

    def stop(self) -> None:
        """Have the recorder read what is left (`_drain`), then close every socket and the
        namespace fd and join the thread; idempotent."""
        if self._wake_w >= 0:
            os.write(self._wake_w, b"x")
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        for sock in self._sockets:
            sock.close()
        self._sockets = []
        for fd in (self._wake_r, self._wake_w, self.netns_fd):
            if fd is not None and fd >= 0:
                os.close(fd)
        self._wake_r = self._wake_w = -1
        self.netns_fd = None

    @property
    def events(self) -> list[dict[str, Any]]:
        return self.log.snapshot()

    @staticmethod
    def guest_etc() -> dict[str, str]:
        """The /etc files a sandbox in the sinkhole shows: its resolver, and localhost."""
        return {"resolv.conf": RESOLV_CONF, "hosts": HOSTS}

    # -- the recorder -----------------------------------------------------------------

    def _serve(self) -> None:
        """Accept connections and read datagrams until `stop`; runs in the namespace, so
        the per-answer sockets it makes are there too. One thread: nothing the job does
        can tie up more of detain than MAX_OPEN buffers of FIRST_BYTES."""
        privileges.join_netns(self.netns_fd)
        with selectors.DefaultSelector() as sel:
            sel.register(self._wake_r, selectors.EVENT_READ, "wake")
            datagrams = [s for s in self._sockets if s.type == socket.SOCK_DGRAM]
            for sock in datagrams:
                sel.register(sock, selectors.EVENT_READ, "udp")
            conns = Connections(sel, [s for s in self._sockets if s.type == socket.SOCK_STREAM],
                                self._record, self.log.lose)
            while True:
                for key, _ in sel.select(conns.timeout()):
                    if key.data == "wake":
                        self._drain(conns, datagrams)
                        return
                    if key.data == "udp":
                        self._datagrams(key.fileobj, UDP_BATCH)
                    elif key.data == "listen":
                        conns.accept(key.fileobj)
                    else:
                        conns.readable(key.fileobj)
                conns.sweep()

    def _drain(self, conns: Connections, datagrams: list[socket.socket]) -> None:
        """The run is over: read every queued datagram and connection, then count what the
        kernel dropped because a datagram queue was full."""
        for sock in datagrams:
            self._datagrams(sock, None)
        conns.drain()
        for sock in datagrams:
            size = 4 * (SK_MEMINFO_DROPS + 1)  # u32 fields; the drop count is the last read
            try:
                info = sock.getsockopt(socket.SOL_SOCKET, SO_MEMINFO, size)
            except OSError:
                continue
            if len(info) >= size:
                self.log.lose(KERNEL_DROPS, struct.unpack_from("I", info, size - 4)[0])

    def _datagrams(self, sock: socket.socket, batch: int | None) -> None:
        """Read up to `batch` queued datagrams (all of them for None)."""
        count = 0
        while batch is None or count < batch:
            try:
                data, ancillary, _, sender = sock.recvmsg(FIRST_BYTES, 256)
            except OSError:  # the queue is empty (EAGAIN)
                return
            count += 1
            destination = _original_destination(ancillary)
            if destination is not None:
                self._datagram(sock, data, destination, sender)

    def _datagram(self, sock: socket.socket, data: bytes, destination: tuple,
                  sender: tuple) -> None:
        question = protocols.dns_question(data) if destination[1] == 53 else None
        if question is None:
            self._record("udp", destination, data)
            return
        name, qtype, end = question
        family = {1: socket.AF_INET, 28: socket.AF_INET6}.get(qtype)
        answer = None
        if family is not None and (family == socket.AF_INET or self.ipv6):
            answer = self.names.address(name, family)
        rdata = None if answer is None else socket.inet_pton(family, answer)
        self._record("dns", destination, data, dns={
            "query": name, "type": protocols.dns_type(qtype), "answer": answer})
        self._reply(sock.family, destination, sender,
                    protocols.dns_answer(data, end, rdata, qtype))

    def _reply(self, family: int, source: tuple, to: tuple, payload: bytes) -> None:
        """Answer from the very address and port the job sent to, as a real server would."""
        with socket.socket(family, socket.SOCK_DGRAM) as out:
            try:
                if family == socket.AF_INET6:
                    out.setsockopt(socket.IPPROTO_IPV6, IPV6_TRANSPARENT, 1)
                else:
                    out.setsockopt(socket.SOL_IP, IP_TRANSPARENT, 1)
                out.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, MARK)
                out.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                out.bind(source[:2])
                out.sendto(payload, to)
            except OSError:
                pass

    def _record(self, kind: str, destination: tuple, data: bytes = b"",
                dns: dict | None = None, note: str | None = None) -> dict[str, Any]:
        address, port = canonical(str(destination[0])), int(destination[1])
        name = self.names.name(address)
        event: dict[str, Any] = {
            "type": "network", "provenance": "kernel/runtime", "observer": "detain sinkhole",
            "ts": round(time.time(), 6), "kind": kind, "address": address, "port": port,
            "name": name, "host": dns["query"] if dns else name or address, "bytes": len(data),
            "first_bytes": None if dns else protocols.text(data, protocols.EXCERPT_CAP),
            "secrets": protocols.secrets_in(dns["query"].encode() if dns else data),
            "http": None, "tls": None, "dns": dns, "note": note}
        if kind == "tcp" and protocols.looks_like_http(data):
            event["http"] = protocols.http_request(data)
        elif kind == "tcp" and protocols.looks_like_tls(data):
            event["tls"] = {"sni": protocols.tls_sni(data)}
        return self.log.add(event)


def _original_destination(ancillary: list) -> tuple[str, int] | None:
    """The (address, port) a TPROXY'd datagram was sent to, from IP(V6)_RECVORIGDSTADDR."""
    for level, kind, data in ancillary:
        if level == socket.SOL_IP and kind == IP_RECVORIGDSTADDR and len(data) >= 8:
            return socket.inet_ntop(socket.AF_INET, data[4:8]), struct.unpack("!H", data[2:4])[0]
        if level == socket.IPPROTO_IPV6 and kind == IPV6_RECVORIGDSTADDR and len(data) >= 24:
            return (socket.inet_ntop(socket.AF_INET6, data[8:24]),
                    struct.unpack("!H", data[2:4])[0])
    return None

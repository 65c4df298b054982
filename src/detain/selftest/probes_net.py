"""Network probes: every way to reach a host listener, and reading the host's links.

Beyond plain connect() and sendto(): every other socket path to a connection or a
listener (MSG_FASTOPEN sends, TCP_FASTOPEN_CONNECT, listen() autobinding, MPTCP, SCTP,
datagrams to host UNIX sockets by path, x32-ABI syscall numbers) and the allow-list
proxy's refusals (loopback and /etc/hosts names, address spellings, pipelining).
"""

from __future__ import annotations

import contextlib
import functools
import os
import platform
import socket
import subprocess
import sys
import time

from ..errors import PolicyError
from ..net.rules import HostRule
from ..net.session import PROXY_PORT
from . import hostview
from .bait import GRACE, Bait, Listener
from .model import Attack, Check, NotApplicable, Outcome, probe, program
from .probes_fs import host_macs

CONNECT = """
import socket
for attempt in range(3):
    try:
        with socket.socket(FAMILY, KIND) as sock:
            sock.settimeout(2)
            if KIND == socket.SOCK_STREAM:
                sock.connect(ADDRESS)
                sock.sendall(b'escaped')
            else:
                sock.sendto(b'escaped', ADDRESS)
    except OSError as exc:
        print(attempt, type(exc).__name__)
"""
SOCKETS = {  # kind: (AF_*, SOCK_*) as numbers, so the job's code needs no host constants
    "tcp4": (2, 1), "udp4": (2, 2), "tcp6": (10, 1), "udp6": (10, 2), "unix": (1, 1),
    "abstract": (1, 1),
}


def _listen(bait: Bait, kind: str) -> Listener:
    try:
        return bait.listener(kind)
    except OSError as exc:
        raise NotApplicable(f"the host cannot open a {kind} listener ({exc.strerror})") from None


def _heard(listener: Listener):
    return lambda _out: listener.heard()


def _connect_probe(kind: str, where: str) -> None:
    @probe("network", kind, f"reach a host listener on {where}")
    def plan(bait: Bait) -> Attack:
        listener = _listen(bait, kind)
        family, sock_type = SOCKETS[kind]
        return Attack(program(bait.tag, CONNECT, FAMILY=family, KIND=sock_type,
                              ADDRESS=listener.address), _heard(listener))


for _kind, _where in (("tcp4", "127.0.0.1 (TCP)"), ("udp4", "127.0.0.1 (UDP)"),
                      ("tcp6", "::1 (TCP)"), ("udp6", "::1 (UDP)"),
                      ("unix", "a UNIX socket path"), ("abstract", "an abstract UNIX socket")):
    _connect_probe(_kind, _where)

CHECKSUM = """
def checksum(data):
    total = sum((data[i] << 8) + data[i + 1] for i in range(0, len(data) - 1, 2))
    total = (total >> 16) + (total & 0xFFFF)
    return ~(total + (total >> 16)) & 0xFFFF

def udp_packet(port, payload):
    import struct
    udp = struct.pack('!HHHH', 40000, port, 8 + len(payload), 0) + payload
    header = struct.pack('!BBHHHBBH4s4s', 0x45, 0, 20 + len(udp), 1, 0, 64, 17, 0,
                         bytes([127, 0, 0, 1]), bytes([127, 0, 0, 1]))
    header = header[:10] + struct.pack('!H', checksum(header)) + header[12:]
    return header + udp
"""


@probe("network", "raw-socket", "send a hand-made UDP packet to a host listener through a "
       "raw socket")
def raw_socket(bait: Bait) -> Attack:
    listener = _listen(bait, "udp4")
    body = CHECKSUM + """
import socket
for proto, packet in ((socket.IPPROTO_RAW, udp_packet(PORT, b'escaped')),):
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_RAW, proto) as sock:
            for _ in range(3):
                sock.sendto(packet, ('127.0.0.1', 0))
    except OSError as exc:
        print('raw', type(exc).__name__)
"""
    return Attack(program(bait.tag, body, PORT=listener.port), _heard(listener))


@probe("network", "packet-socket", "inject an Ethernet frame carrying UDP to a host "
       "listener on the loopback interface (AF_PACKET)")
def packet_socket(bait: Bait) -> Attack:
    listener = _listen(bait, "udp4")
    body = CHECKSUM + """
import socket
frame = bytes(12) + b'\\x08\\x00' + udp_packet(PORT, b'escaped')
try:
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW) as sock:
        sock.bind(('lo', 0))
        for _ in range(3):
            sock.send(frame)
except OSError as exc:
    print('packet', type(exc).__name__)
"""
    return Attack(program(bait.tag, body, PORT=listener.port), _heard(listener))


@probe("network", "netlink", "dump the host's network links over rtnetlink")
def netlink(bait: Bait) -> Attack:
    macs = [mac.replace(":", "") for mac in host_macs()]
    if not macs:
        raise NotApplicable("this host has no network interface with a MAC address to compare")
    body = """
import socket, struct
try:
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0) as sock:
        sock.settimeout(2)
        request = struct.pack('=LHHLLBxxxiLL', 32, 18, 0x301, 1, 0, 0, 0, 0, 0)
        sock.send(request)
        for _ in range(20):
            data = sock.recv(65536)
            print(data.hex())
            if len(data) < 20 or struct.unpack_from('=H', data, 4)[0] == 3:
                break
except OSError as exc:
    print('netlink', type(exc).__name__)
"""

    def check(out: Outcome) -> str | None:
        return next((f"the host's link address {mac} came back" for mac in macs
                     if mac.encode() in out.output), None)
    return Attack(program(bait.tag, body), check)


# A sandbox sharing the host's network (landlock) must hold no socket that could open a
# connection or a listener: Landlock checks only connect() and bind(), and these paths
# reach a host listener without either.
MPTCP, SCTP = 262, 132
CONNECT_AND_SEND = """
def attempt(sock, address):
    sock.connect(address)
    sock.sendall(b'escaped')
"""
STREAM_PATHS = {  # name: (what it tries, the job's socket protocol, how it sends)
    "fastopen-sendto": ("open a TCP connection with sendto(MSG_FASTOPEN), no connect()",
                        0, """
def attempt(sock, address):
    sock.sendto(b'escaped', socket.MSG_FASTOPEN, address)
"""),
    "fastopen-sendmsg": ("open a TCP connection with sendmsg(MSG_FASTOPEN), no connect()",
                         0, """
def attempt(sock, address):
    sock.sendmsg([b'escaped'], [], socket.MSG_FASTOPEN, address)
"""),
    "fastopen-sendmmsg": ("open a TCP connection with sendmmsg(MSG_FASTOPEN), no "
                          "connect()", 0, """
import ctypes, struct
class Iovec(ctypes.Structure):
    _fields_ = [('base', ctypes.c_char_p), ('len', ctypes.c_size_t)]
class Msghdr(ctypes.Structure):
    _fields_ = [('name', ctypes.c_char_p), ('namelen', ctypes.c_uint32),
                ('iov', ctypes.POINTER(Iovec)), ('iovlen', ctypes.c_size_t),
                ('control', ctypes.c_void_p), ('controllen', ctypes.c_size_t),
                ('flags', ctypes.c_int)]
class Mmsghdr(ctypes.Structure):
    _fields_ = [('hdr', Msghdr), ('len', ctypes.c_uint)]
def attempt(sock, address):
    host = socket.inet_pton(sock.family, address[0])
    port = struct.pack('!H', address[1])
    name = struct.pack('=H', sock.family) + port + (
        host + bytes(8) if sock.family == socket.AF_INET else bytes(4) + host + bytes(4))
    iov = Iovec(b'escaped', 7)
    msg = Mmsghdr(Msghdr(name, len(name), ctypes.pointer(iov), 1, None, 0, 0), 0)
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.sendmmsg(sock.fileno(), ctypes.byref(msg), 1, socket.MSG_FASTOPEN) < 0:
        raise OSError(ctypes.get_errno(), 'sendmmsg')
"""),
    "fastopen-connect": ("set TCP_FASTOPEN_CONNECT, then connect() and write", 0, """
def attempt(sock, address):
    sock.setsockopt(socket.IPPROTO_TCP, 30, 1)
    sock.connect(address)
    sock.sendall(b'escaped')
"""),
    "mptcp": ("connect an MPTCP socket (IPPROTO_MPTCP), which falls back to TCP", MPTCP,
              CONNECT_AND_SEND),
    "sctp": ("connect an SCTP stream socket to a host SCTP listener", SCTP,
             CONNECT_AND_SEND),
}
# Blocking sockets: with a timeout set, a MSG_FASTOPEN send would return EINPROGRESS and
# close the socket before its handshake completes, proving nothing.
TRY_EACH = """
for family, address in TARGETS:
    try:
        with socket.socket(family, socket.SOCK_STREAM, PROTO) as sock:
            attempt(sock, address)
    except OSError as exc:
        print(family, type(exc).__name__)
"""


def stream_path_program(tag: str, name: str, targets: list[tuple[int, tuple]]) -> str:
    """The job for one of STREAM_PATHS against `targets` [(AF_*, address)]: shared with
    tests/test_landlock_network.py, which attacks its own listeners with it."""
    _, protocol, attempt = STREAM_PATHS[name]
    return program(tag, "import socket\n" + attempt + TRY_EACH, TARGETS=targets,
                   PROTO=protocol)


def _catcher(bait: Bait, family: int, kind: int, protocol: int, address, what: str):
    """A host socket bait.Listener does not offer (SCTP, UNIX datagram) and its judge."""
    try:
        sock = socket.socket(family, kind, protocol)
    except OSError as exc:
        raise NotApplicable(f"the host cannot open {what} ({exc.strerror})") from None
    bait.on_close(sock.close)
    sock.bind(address)
    if kind == socket.SOCK_STREAM:
        sock.listen(4)
    else:
        os.chmod(address, 0o777)
    sock.setblocking(False)

    def heard(_out: Outcome) -> str | None:
        time.sleep(GRACE)
        try:
            sock.accept()[0].close() if kind == socket.SOCK_STREAM else sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return None
        return f"{what} on the host was reached"
    return sock.getsockname()[:2] if family != socket.AF_UNIX else address, heard


def _stream_path_probe(name: str, tries: str, protocol: int) -> None:
    @probe("network", name, tries + ", to host listeners on 127.0.0.1 and ::1")
    def plan(bait: Bait) -> Attack:
        if protocol == SCTP:
            caught = [_catcher(bait, family, socket.SOCK_STREAM, SCTP, (host, 0),
                               f"an SCTP listener on {host}")
                      for family, host in ((socket.AF_INET, "127.0.0.1"),
                                           (socket.AF_INET6, "::1"))]
            targets = [(2, caught[0][0]), (10, caught[1][0])]
            checks = [check for _, check in caught]
        else:
            listeners = [_listen(bait, "tcp4"), _listen(bait, "tcp6")]
            targets = [(2, listeners[0].address), (10, listeners[1].address)]
            checks = [_heard(listener) for listener in listeners]
        return Attack(stream_path_program(bait.tag, name, targets), _any(checks))


def _any(checks: list[Check]) -> Check:
    return lambda out: "; ".join(found for found in (check(out) for check in checks)
                                 if found) or None


for _name, (_tries, _protocol, _) in STREAM_PATHS.items():
    _stream_path_probe(_name, _tries, _protocol)

LISTEN = """
import socket, threading
def serve(sock):
    while True:
        conn, _ = sock.accept()
        conn.sendall(SECRET)
        conn.close()
for family in (socket.AF_INET, socket.AF_INET6):
    try:
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.listen(4)
        threading.Thread(target=serve, args=(sock,), daemon=True).start()
        print('listening', family, sock.getsockname()[1], flush=True)
    except OSError as exc:
        print('listen', family, type(exc).__name__)
ready()
"""


@probe("network", "listen-autobind", "listen() on an unbound TCP socket (IPv4 and IPv6), "
       "autobinding a port on every address; the host then connects to it")
def listen_autobind(bait: Bait) -> Attack:
    secret = bait.secret.encode()

    def observe() -> str | None:
        return reach_job_listeners(hostview.job_processes(bait.tag), secret)
    return Attack(program(bait.tag, LISTEN, wait=True, SECRET=secret),
                  lambda out: out.observed, observe=observe)


def reach_job_listeners(procs: list[hostview.Proc], secret: bytes) -> str | None:
    """Connect from the host to every TCP port that the job's processes listen on in the
    host's own network namespace; an answer carrying `secret` proves the job was reached.
    Listeners in a namespace of the sandbox's own are not in the host's tables."""
    inodes = set()
    for proc in procs:
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{proc.pid}/fd"):
                with contextlib.suppress(OSError):
                    link = os.readlink(f"/proc/{proc.pid}/fd/{fd}")
                    if link.startswith("socket:["):
                        inodes.add(link[8:-1])
    for family, table, loopback in ((socket.AF_INET, "/proc/net/tcp", "127.0.0.1"),
                                    (socket.AF_INET6, "/proc/net/tcp6", "::1")):
        for port in _listening_ports(table, inodes):
            with contextlib.suppress(OSError), socket.socket(family) as sock:
                sock.settimeout(2)
                sock.connect((loopback, port))
                if secret in sock.recv(len(secret) + 16):
                    return f"the host connected to the job's listening port {port}"
    return None


def _listening_ports(table: str, inodes: set[str]) -> list[int]:
    ports = []
    with contextlib.suppress(OSError), open(table) as handle:
        for line in handle.readlines()[1:]:
            fields = line.split()
            if len(fields) > 9 and fields[3] == "0A" and fields[9] in inodes:
                ports.append(int(fields[1].rpartition(":")[2], 16))
    return ports


@probe("network", "unix-datagram", "send a datagram to a host UNIX socket by path from a "
       "socketpair(AF_UNIX, SOCK_DGRAM), which needs neither socket() nor connect()")
def unix_datagram(bait: Bait) -> Attack:
    address, heard = _catcher(bait, socket.AF_UNIX, socket.SOCK_DGRAM, 0,
                              str(bait.dir / "dgram"), "a UNIX datagram socket")
    body = """
import socket
try:
    ours, _ = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    for _ in range(3):
        ours.sendto(b'escaped', ADDRESS)
except OSError as exc:
    print('dgram', type(exc).__name__)
"""
    return Attack(program(bait.tag, body, ADDRESS=address), heard)


X32_SYSCALL_BIT = 0x40000000
X32_GETPID = X32_SYSCALL_BIT | 39
X32_CONNECT = """
import ctypes, struct
libc = ctypes.CDLL(None, use_errno=True)
fd = libc.syscall(X32 | 41, 2, 1, 0)
name = struct.pack('=H', 2) + struct.pack('!H', PORT) + bytes([127, 0, 0, 1]) + bytes(8)
if fd < 0 or libc.syscall(X32 | 42, fd, name, len(name)) < 0:
    print('x32', ctypes.get_errno())
print('survived')
"""


@functools.cache
def _kernel_has_x32() -> bool:
    """Whether this kernel serves x32 syscalls, asked of a throw-away child (a host-side
    seccomp filter could kill the caller for trying)."""
    code = f"import ctypes; print(ctypes.CDLL(None).syscall({X32_GETPID}))"
    done = subprocess.run([sys.executable, "-I", "-S", "-c", code], capture_output=True,
                          text=True, timeout=30)
    return done.returncode == 0 and done.stdout.strip() not in ("", "-1")


@probe("network", "x32-abi", "reach a host TCP listener with x32-ABI syscall numbers "
       "(socket, connect), which a filter written for x86_64 numbers alone would miss")
def x32_abi(bait: Bait) -> Attack:
    if platform.machine() != "x86_64":
        raise NotApplicable("the x32 ABI exists only on x86_64")
    if not _kernel_has_x32():
        raise NotApplicable("this kernel has no x32 ABI (CONFIG_X86_X32_ABI is off), so no "
                            "x32 syscall reaches a filter")
    listener = _listen(bait, "tcp4")
    return Attack(program(bait.tag, X32_CONNECT, X32=X32_SYSCALL_BIT, PORT=listener.port),
                  _heard(listener))


# The allow-list proxy (backends with a network namespace of their own): whatever the job
# asks of it, a host listener on loopback that no rule lists must hear nothing.
ASK_PROXY = """
import socket
def ask(request):
    try:
        with socket.create_connection(('127.0.0.1', PROXY_PORT), timeout=1) as sock:
            sock.sendall(request)
            print(request.split(b'\\r\\n')[0], sock.recv(64).split(b'\\r\\n')[0])
    except OSError as exc:
        print(request.split(b'\\r\\n')[0], type(exc).__name__)
"""
EACH_TARGET = ASK_PROXY + """
for target in TARGETS:
    ask(b'CONNECT %s HTTP/1.1\\r\\nHost: %s\\r\\n\\r\\n' % (target, target))
    ask(b'GET http://%s/ HTTP/1.1\\r\\nHost: %s\\r\\n\\r\\n' % (target, target))
"""
PIPELINED = ASK_PROXY + """
for first, second in (
        (b'GET http://%s/ HTTP/1.1\\r\\nHost: %s\\r\\n\\r\\n', b'GET http://%s/ HTTP/1.1\\r\\n'
         b'Host: %s\\r\\n\\r\\n'),
        (b'CONNECT %s HTTP/1.1\\r\\nHost: %s\\r\\n\\r\\n', b'CONNECT %s HTTP/1.1\\r\\n'
         b'Host: %s\\r\\n\\r\\n'),
        (b'POST http://%s/ HTTP/1.1\\r\\nHost: %s\\r\\nContent-Length: 0\\r\\n'
         b'Transfer-Encoding: chunked\\r\\n\\r\\n0\\r\\n\\r\\n', b'GET http://%s/ HTTP/1.1\\r\\n'
         b'Host: %s\\r\\n\\r\\n')):
    ask(first % (ALLOWED, ALLOWED) + second % (VICTIM, VICTIM))
ask(b'GET http://%s/ HTTP/1.1\\r\\nHost: %s\\r\\n\\r\\n' % (ALLOWED, VICTIM))
"""
IPV4_SPELLINGS = ("127.0.0.1", "127.1", "127.0.1", "2130706433", "0x7f.1", "0x7f000001",
                  "0x7f.0.0.1", "0177.0.0.1", "017700000001", "127.000.000.001", "0",
                  "0.0.0.0", "0x0", "[::ffff:127.0.0.1]", "[::ffff:7f00:1]",  # noqa: S104
                  "[0:0:0:0:0:ffff:7f00:1]", "[::127.0.0.1]", "[::ffff:0.0.0.0]",
                  "[64:ff9b::127.0.0.1]")
IPV6_SPELLINGS = ("[::1]", "[0:0:0:0:0:0:0:1]", "[0::1]", "[::]", "[::1%lo]")


def _etc_hosts_names() -> list[str]:
    names = set()
    with contextlib.suppress(OSError), open("/etc/hosts") as handle:
        for line in handle:
            names.update(line.partition("#")[0].split()[1:])
    return sorted(names)


def _proxy_attack(bait: Bait, body: str, allow: list[str], victims: list[Listener],
                  **consts) -> Attack:
    """Run `body` with `allow` as the allow-list; n/a where the backend offers none."""
    checks = [_heard(victim) for victim in victims]

    def check(out: Outcome) -> str | None:
        if out.result is None and out.error and "allow-list" in out.error:
            raise NotApplicable(out.error)
        return _any(checks)(out)
    return Attack(program(bait.tag, body, PROXY_PORT=PROXY_PORT, **consts), check,
                  settings={"allow_host": allow, "timeout": 60})


def _victims(bait: Bait) -> tuple[Listener, Listener]:
    return _listen(bait, "tcp4"), _listen(bait, "tcp6")


@probe("network", "proxy-loopback-names", "ask the allow-list proxy for loopback names and "
       "every /etc/hosts name, each of them listed, at a host listener's port")
def proxy_loopback_names(bait: Bait) -> Attack:
    v4, v6 = _victims(bait)
    names = [name for name in dict.fromkeys(["localhost", "ip6-localhost", "ip6-loopback",
                                             *_etc_hosts_names()]) if _valid_rule(name)]
    listed = [f"{name}:{victim.port}" for name in names for victim in (v4, v6)]
    asked = listed + [f"{name}:{victim.port}" for name in ("LOCALHOST", "localhost.")
                      for victim in (v4, v6)]
    return _proxy_attack(bait, EACH_TARGET, listed, [v4, v6],
                         TARGETS=[target.encode() for target in asked])


def _valid_rule(name: str) -> bool:
    try:
        HostRule.parse(name)
    except PolicyError:
        return False
    return True


@probe("network", "proxy-address-spellings", "ask the allow-list proxy for 127.0.0.1 and ::1 "
       "spelled every other way (2130706433, 0x7f.1, 127.1, ::ffff:127.0.0.1, 0.0.0.0, ...), "
       "and for the listed addresses at an unlisted port")
def proxy_address_spellings(bait: Bait) -> Attack:
    v4, v6 = _victims(bait)
    allowed4, allowed6 = _victims(bait)
    asked = [f"{host}:{v4.port}" for host in IPV4_SPELLINGS]
    asked += [f"{host}:{v6.port}" for host in IPV6_SPELLINGS]
    asked.append(f"127.0.0.1:{v4.port + 65536}")
    return _proxy_attack(bait, EACH_TARGET, [f"127.0.0.1:{allowed4.port}",
                                             f"[::1]:{allowed6.port}"], [v4, v6],
                         TARGETS=[target.encode() for target in asked])


@probe("network", "proxy-pipelining", "pipeline a second request (plain, CONNECT, after a "
       "chunked body) to an unlisted port behind an allowed one, through one proxy "
       "connection")
def proxy_pipelining(bait: Bait) -> Attack:
    victim, allowed = _listen(bait, "tcp4"), _listen(bait, "tcp4")
    target = f"127.0.0.1:{allowed.port}"
    return _proxy_attack(bait, PIPELINED, [target], [victim], ALLOWED=target.encode(),
                         VICTIM=f"127.0.0.1:{victim.port}".encode())


ABSTRACT_NAME = """
import socket
names = []
for make in (lambda: socket.socketpair()[0], lambda: socket.socket(socket.AF_UNIX)):
    try:
        sock = make()
        sock.bind(NAME)
        names.append(sock)
    except OSError:
        pass
ready()
"""


@probe("network", "abstract-name", "take a name in the host's abstract UNIX socket namespace "
       "(a bound socketpair needs no socket()), denying it to a host service")
def abstract_name(bait: Bait) -> Attack:
    name = f"\0detain-selftest-{bait.secret}"

    def observe() -> str | None:
        with socket.socket(socket.AF_UNIX) as host_side:
            try:
                host_side.bind(name)
            except OSError:
                return "the job held an abstract socket name in the host's namespace"
        return None
    return Attack(program(bait.tag, ABSTRACT_NAME, wait=True, NAME=name),
                  lambda out: out.observed, observe=observe)

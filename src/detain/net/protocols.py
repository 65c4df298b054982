"""What the sinkhole makes of the first bytes a job sent: DNS, HTTP and TLS, parsed warily.

Every byte here came from the sandbox, so each parser takes a capped buffer, never trusts
a length field beyond it, never follows a DNS compression pointer, and returns None (or a
partial answer) instead of raising on malformed input. Text that leaves this module is
decoded with escapes and passed through `safe_text.visible`, so a report can print it.
"""

from __future__ import annotations

import re
import struct
from typing import Any

from ..report.safe_text import visible

TEXT_CAP = 300  # characters of any one recorded field (host, path, SNI, excerpt)
EXCERPT_CAP = 512  # bytes of a body or payload kept as an excerpt
DNS_TYPES = {1: "A", 2: "NS", 5: "CNAME", 12: "PTR", 15: "MX", 16: "TXT", 28: "AAAA",
             33: "SRV", 65: "HTTPS", 255: "ANY"}
HTTP_METHODS = (b"GET", b"POST", b"PUT", b"PATCH", b"DELETE", b"HEAD", b"OPTIONS",
                b"CONNECT", b"TRACE")
# Words a reader looks for first in what would have left: credentials and keys.
SECRET_MARKERS = re.compile(
    r"aws_secret_access_key|aws_access_key_id|aws_session_token|AKIA[0-9A-Z]{16}|"
    r"-----BEGIN [A-Z ]*PRIVATE KEY-----|ssh-(?:rsa|ed25519) |id_rsa|password|passwd|"
    r"secret|api[_-]?key|token|credentials|\.netrc|\.pypirc", re.IGNORECASE)


def text(data: bytes, cap: int = TEXT_CAP) -> str:
    """Job bytes as printable text, capped: UTF-8 where valid, `\\xNN` for any other byte,
    escapes (`safe_text.visible`) for controls and for a backslash itself."""
    decoded = data[:cap * 4].decode("utf-8", "surrogateescape")
    return "".join(f"\\x{ord(c) - 0xDC00:02x}" if 0xDC80 <= ord(c) <= 0xDCFF
                   else visible(c) for c in decoded)[:cap]


def secrets_in(data: bytes) -> list[str]:
    """The credential markers found in `data`, first occurrence order, at most five."""
    found = SECRET_MARKERS.findall(data.decode("latin-1"))
    return [visible(word)[:60] for word in dict.fromkeys(found)][:5]


# --- DNS -------------------------------------------------------------------------------

def dns_question(packet: bytes) -> tuple[str, int, int] | None:
    """(name, qtype, end offset of the question) of a standard one-question query."""
    if len(packet) < 12:
        return None
    flags, qdcount = struct.unpack("!HH", packet[2:6])
    if flags & 0x8000 or (flags >> 11) & 0xF or qdcount != 1:
        return None  # a response, an opcode other than QUERY, or not one question
    labels, offset = [], 12
    while True:
        if offset >= len(packet):
            return None
        length = packet[offset]
        if length == 0:
            offset += 1
            break
        if length & 0xC0 or offset + 1 + length > len(packet) or len(labels) >= 127:
            return None  # a pointer or an overrun: no real resolver sends one in a query
        labels.append(packet[offset + 1:offset + 1 + length])
        offset += 1 + length
    if offset + 4 > len(packet):
        return None
    qtype, _qclass = struct.unpack("!HH", packet[offset:offset + 4])
    return text(b".".join(labels).lower()), qtype, offset + 4


def dns_answer(packet: bytes, end: int, rdata: bytes | None, rtype: int) -> bytes:
    """The response to the query in `packet[:end]`: one record of `rtype` carrying `rdata`,
    or no record (NOERROR, so the name exists but has no such data) when rdata is None."""
    ident, flags = struct.unpack("!HH", packet[:4])
    answers = 0 if rdata is None else 1
    head = struct.pack("!HHHHHH", ident, 0x8180 | (flags & 0x0100), 1, answers, 0, 0)
    body = packet[12:end]
    if rdata is not None:
        body += struct.pack("!HHHIH", 0xC00C, rtype, 1, 60, len(rdata)) + rdata
    return head + body


def dns_type(qtype: int) -> str:
    return DNS_TYPES.get(qtype, str(qtype))


# --- HTTP ------------------------------------------------------------------------------

def looks_like_http(data: bytes) -> bool:
    return data.split(b" ", 1)[0] in HTTP_METHODS


def _split_head(data: bytes) -> tuple[bytes, bytes, bool]:
    """(head, body, whether the head is complete); bare LF line ends are taken too, as
    lenient servers take them (and hand-written exfiltration code sends them)."""
    ends = [(i, len(sep)) for sep in (b"\r\n\r\n", b"\n\n") if (i := data.find(sep)) >= 0]
    if not ends:
        return data, b"", False
    index, size = min(ends)
    return data[:index], data[index + size:], True


def http_complete(data: bytes) -> bool:
    """Whether a request head and the body its Content-Length announces have arrived."""
    head, body, complete = _split_head(data)
    length = _content_length(head)
    return complete and (length is None or len(body) >= length)


def _content_length(head: bytes) -> int | None:
    match = re.search(rb"\ncontent-length:[ \t]*(\d{1,12})", head, re.IGNORECASE)
    return int(match.group(1)) if match else None


def http_request(data: bytes) -> dict[str, Any] | None:
    """Method, Host, path, announced and seen body sizes, and a body excerpt."""
    head, body, _ = _split_head(data)
    line, *lines = head.split(b"\n")
    parts = line.rstrip(b"\r").split(b" ")
    if len(parts) < 2 or parts[0] not in HTTP_METHODS:
        return None
    host = b""
    for item in lines:
        name, sep, value = item.partition(b":")
        if sep and name.strip().lower() == b"host":
            host = value.strip()
            break
    length = _content_length(head)
    return {"method": parts[0].decode(), "host": text(host), "path": text(parts[1]),
            "body_bytes": len(body) if length is None else length,
            "body_excerpt": text(body[:EXCERPT_CAP], EXCERPT_CAP)}


# --- TLS -------------------------------------------------------------------------------

def looks_like_tls(data: bytes) -> bool:
    return len(data) >= 3 and data[0] == 0x16 and data[1] == 0x03


def tls_complete(data: bytes) -> bool:
    """Whether the first TLS record (the ClientHello) has fully arrived."""
    return len(data) >= 5 and len(data) >= 5 + struct.unpack("!H", data[3:5])[0]


def tls_sni(data: bytes) -> str | None:
    """The server name of a ClientHello's SNI extension, or None."""
    try:
        record = data[5:5 + struct.unpack("!H", data[3:5])[0]]
        if record[0] != 1:  # not a ClientHello
            return None
        offset = 4 + 2 + 32  # handshake header, client version, random
        offset += 1 + record[offset]  # session id
        offset += 2 + struct.unpack("!H", record[offset:offset + 2])[0]  # cipher suites
        offset += 1 + record[offset]  # compression methods
        end = offset + 2 + struct.unpack("!H", record[offset:offset + 2])[0]
        offset += 2
        while offset + 4 <= min(end, len(record)):
            kind, size = struct.unpack("!HH", record[offset:offset + 4])
            offset += 4
            if kind == 0:  # server_name: list length, then (type, length, name)
                entry = record[offset + 2:offset + size]
                if entry[:1] == b"\x00":
                    length = struct.unpack("!H", entry[1:3])[0]
                    return text(entry[3:3 + length])
                return None
            offset += size
    except (IndexError, struct.error):
        return None
    return None

"""The sinkhole's records as report events: one sentence a person reads, and where from.

A record is observed outside the sandbox, so its event is `kernel/runtime` whatever the
job did. Its file:line can only come from the job's side: the in-process audit event for
the same destination (`socket.connect` / `socket.sendto` to that address and port,
`socket.getaddrinfo` of that name) lends its place, and the event says which one did, so
a reader knows the place is the job's claim while the traffic itself is not.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any

VERBS = {"POST": "POSTed", "PUT": "PUT", "PATCH": "PATCHed"}
_ADDRESS = re.compile(r"^\('([0-9a-fA-F.:%\w-]{1,100})', (\d{1,5})[,)]")


def canonical(address: str) -> str:
    """One spelling per destination: an IPv4-mapped IPv6 address as IPv4 (the packet was
    IPv4), no zone (`fe80::1%lo`), IPv6 compressed; anything else (a name) unchanged."""
    try:
        ip = ipaddress.ip_address(address.partition("%")[0])
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return str(ip)


def target(record: dict[str, Any]) -> str:
    """`name:port` when the job looked the address up, else `address:port`."""
    host = record.get("name") or record["address"]
    return f"[{host}]:{record['port']}" if ":" in host else f"{host}:{record['port']}"


def _containing(record: dict[str, Any]) -> str:
    found = record.get("secrets") or []
    return f" containing {', '.join(f'`{word}`' for word in found)}" if found else ""


def summary(record: dict[str, Any]) -> str:
    """What would have left, as the report says it (and why it may be partial)."""
    said = _what(record)
    return f"{said} ({record['note']})" if record.get("note") else said


def _what(record: dict[str, Any]) -> str:
    dns, http, tls = record.get("dns"), record.get("http"), record.get("tls")
    if dns:
        answer = dns["answer"] or "no record"
        return (f"DNS {dns['type']} query for {dns['query']}{_containing(record)} (answered "
                f"{answer} by the sinkhole)")
    if http:
        verb = VERBS.get(http["method"])
        if verb and http["body_bytes"]:
            return (f"would have {verb} {http['body_bytes']} bytes{_containing(record)} to "
                    f"{target(record)} {http['path']}")
        return f"would have sent {http['method']} {http['path']} to {target(record)}" + (
            f" (Host {http['host']})" if http["host"] else "") + _containing(record)
    if tls:
        sni = f" for {tls['sni']}" if tls.get("sni") else " (no SNI)"
        return f"would have opened TLS to {target(record)}{sni}"
    if record["kind"] == "udp":
        return (f"would have sent a {record['bytes']}-byte UDP datagram to {target(record)}"
                f"{_containing(record)}")
    if not record["bytes"]:
        return f"connected to {target(record)} (sinkhole) and sent nothing"
    return (f"would have sent {record['bytes']} bytes to {target(record)}{_containing(record)}"
            f": {record['first_bytes'][:60]}")


def _event(name: str, ts: float | None, detail: dict[str, Any], said: str) -> dict[str, Any]:
    """The report's event shape (see report/events.py) for something the recorder saw."""
    return {"seq": None, "t": None, "ts": ts, "event": name, "category": "network",
            "severity": "high", "file": None, "line": None, "detail": detail, "summary": said,
            "provenance": "kernel/runtime", "suspect": None}


def as_behaviour_event(record: dict[str, Any]) -> dict[str, Any]:
    """A sinkhole record as a report event."""
    return _event(f"sinkhole.{record['kind']}", record["ts"], dict(record), summary(record))


def lost_event(lost: dict[str, int]) -> dict[str, Any]:
    """One event for everything the recorder could not keep or read: the job may have
    sent more than the report shows, which the verdict holds suspicious on its own."""
    total = sum(lost.values())
    said = "; ".join(f"{count} {reason}" for reason, count in lost.items())
    return _event("sinkhole.lost", None, {"dropped": total, "lost": dict(lost)},
                  f"the sinkhole's recorder missed {total} attempt(s): {said}")


def _key(event: dict[str, Any]) -> tuple | None:
    """What an in-process network event names: ("dns", name) or (address, port)."""
    detail = event.get("detail") or {}
    if event.get("event") == "socket.getaddrinfo":
        host = str(detail.get("host", ""))[:300].lower().rstrip(".")
        return ("dns", host) if host else None
    if event.get("event") in ("socket.connect", "socket.sendto", "socket.sendmsg"):
        match = _ADDRESS.match(str(detail.get("address", ""))[:200])
        return (canonical(match.group(1)), int(match.group(2))) if match else None
    return None


def attribute(events: list[dict[str, Any]], records: list[dict[str, Any]]) -> None:
    """Give each sinkhole event the file:line of the first unused in-process event for the
    same destination (the job's side of the same act); `records` are sinkhole events."""
    waiting: dict[tuple, list[dict[str, Any]]] = {}
    for event in events:
        key = _key(event) if event.get("provenance") == "in-process" else None
        if key is not None and event.get("file"):
            waiting.setdefault(key, []).append(event)
    for record in records:
        detail = record["detail"]
        key = (("dns", detail["dns"]["query"]) if detail.get("dns")
               else (canonical(detail["address"]), detail["port"]))
        if waiting.get(key):  # one lookup asks for A and AAAA: a name's event is kept
            source = waiting[key][0] if key[0] == "dns" else waiting[key].pop(0)
            record.update(file=source["file"], line=source["line"])
            detail["attributed_by"] = f"in-process event {source.get('seq')} ({source['event']})"

"""The sinkhole's record of one run: capped so cheap noise can never push evidence out.

One shared cap let 12,000 one-byte datagrams fill the log before the job posted a key, and
the post was never seen. So every record falls in one bucket with its own caps:
  * *evidence*, whatever its kind: it carried credential markers, or an HTTP request or a
    TLS ClientHello, i.e. something a reader must see. It has a reserve of its own that
    nothing else spends (EVIDENCE_CAP, at most EVIDENCE_PER_DESTINATION of it per place);
  * everything else, per kind (dns, tcp, udp: KIND_CAP each) and per destination
    (address and port, or the name a query asked for: DESTINATION_CAP each).
A record beyond its caps is counted, not kept; so is everything else the recorder could
not read (a connection cut short, a datagram the kernel dropped), each under its reason.
`dropped` is their sum, and a run with any says so in a note and in the verdict.
"""

from __future__ import annotations

import threading
from typing import Any

KIND_CAP = 2_000
DESTINATION_CAP = 100
EVIDENCE_CAP = 2_000
EVIDENCE_PER_DESTINATION = 200
KINDS = ("dns", "tcp", "udp")
BEYOND = "{} records beyond the caps (counted, not kept)"  # a loss reason, per bucket


def is_evidence(record: dict[str, Any]) -> bool:
    """Whether a record shows what would have left: credentials, a request, a handshake."""
    return bool(record.get("secrets") or record.get("http") or record.get("tls"))


def _place(record: dict[str, Any]) -> tuple:
    dns = record.get("dns")
    if dns:
        return ("dns", dns["query"])
    return (record["kind"], record["address"], record["port"])


class RecordLog:
    """Records shared by the recorder's threads, with a count of each kind seen and of
    each reason something was not kept."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.seen = dict.fromkeys(KINDS, 0)
        self.lost: dict[str, int] = {}
        self._kept: dict[tuple, int] = {}
        self._lock = threading.Lock()

    def add(self, record: dict[str, Any]) -> dict[str, Any]:
        """Keep `record` if its bucket has room, else count it; returns it either way."""
        bucket = "evidence" if is_evidence(record) else record["kind"]
        caps = ((EVIDENCE_CAP, EVIDENCE_PER_DESTINATION) if bucket == "evidence"
                else (KIND_CAP, DESTINATION_CAP))
        place = (bucket, _place(record))
        with self._lock:
            self.seen[record["kind"]] = self.seen.get(record["kind"], 0) + 1
            if self._kept.get(bucket, 0) < caps[0] and self._kept.get(place, 0) < caps[1]:
                self._kept[bucket] = self._kept.get(bucket, 0) + 1
                self._kept[place] = self._kept.get(place, 0) + 1
                self.events.append(record)
            else:
                self._count(BEYOND.format(bucket), 1)
        return record

    def lose(self, reason: str, count: int = 1) -> None:
        """Count `count` things the recorder could not read in full, under `reason`."""
        if count > 0:
            with self._lock:
                self._count(reason, count)

    def _count(self, reason: str, count: int) -> None:
        self.lost[reason] = self.lost.get(reason, 0) + count

    def snapshot(self) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(event) for event in self.events]

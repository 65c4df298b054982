"""One run's egress: the proxy started for it, how the sandbox reaches it, what it saw.

The base backend calls `start` after preparing a run and `finish` once the sandbox is gone.
A backend opts in by declaring `own_network_namespace = True` and showing `host_dir`
read-only at `GUEST_NET_DIR` inside; the launcher then forwards 127.0.0.1:PROXY_PORT (in
the sandbox's own namespace, where nothing else listens) to the socket there. A backend
that shares the host's network cannot offer an allow-list this way, and asking for one
there is an error, not a silent "allow everything" (DESIGN rule 4).

With `--network sinkhole` (net/sinkhole.py) the session also owns the run's sinkhole: a
network namespace that a backend declaring `sinkhole_network = True` puts the sandbox in
(`ctx.network.sinkhole.netns_fd`), where everything not sent through the proxy is answered
and recorded. With an allow-list too, the launcher's forwarder to the proxy is the one
destination the sinkhole leaves alone.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ProtectionError
from . import GUEST_NET_DIR
from .rules import HostRule, Resolver, system_resolver

if TYPE_CHECKING:
    from .sinkhole import Sinkhole

SOCKET_NAME = "proxy.sock"
PROXY_PORT = 3128
# The host-side resolver every proxy uses; tests replace it to simulate DNS answers.
resolver: Resolver = system_resolver


class EgressSession:
    """The proxy of one run and the options that connect the sandbox to it."""

    def __init__(self, rules: tuple[HostRule, ...], host_dir: Path,
                 sinkhole: Sinkhole | None = None) -> None:
        self.rules = rules
        self.host_dir = host_dir
        self.proxy = None
        if rules:  # the proxy's code loads only for runs with an allow-list
            from .proxy import Proxy

            self.proxy = Proxy(rules, host_dir / SOCKET_NAME, resolver=resolver)
        self.sinkhole = sinkhole
        self._stopped = False

    def launcher_options(self) -> list[str]:
        if self.proxy is None:
            return []
        return ["--proxy", f"{PROXY_PORT}:{GUEST_NET_DIR}/{SOCKET_NAME}"]

    def stop(self) -> None:
        if not self._stopped:
            self._stopped = True
            for part in (self.proxy, self.sinkhole):
                if part is not None:
                    part.stop()

    def finish(self, result: Any) -> None:
        """Stop proxy and sinkhole, and put what they saw into the result's behaviour."""
        self.stop()
        if self.sinkhole is not None:
            _sinkhole_finish(self.sinkhole, result)
        if self.proxy is not None:
            self._proxy_finish(result)

    def _proxy_finish(self, result: Any) -> None:
        attempts = self.proxy.events
        behaviour = result.behaviour
        behaviour.setdefault("events", []).extend(as_behaviour_event(a) for a in attempts)
        behaviour["egress"] = {
            "allow": [str(rule) for rule in self.rules],
            "attempts": len(attempts) + self.proxy.log.dropped,
            "allowed": sum(1 for a in attempts if a["allowed"]),
            "refused": sum(1 for a in attempts if not a["allowed"]),
            "dropped": self.proxy.log.dropped,
        }
        if self.proxy.log.dropped:
            result.notes.append(f"network: {self.proxy.log.dropped} connection attempt(s) "
                                "beyond the event cap were refused or relayed unrecorded")
        result.assurance["network"] = ("allow-list through detain's host proxy "
                                       f"({len(self.rules)} rule(s)); no direct route" + (
                                           "; everything else to the sinkhole"
                                           if self.sinkhole is not None else ""))


def _sinkhole_finish(sinkhole: Sinkhole, result: Any) -> None:
    from . import sinkhole_events
    from .sinkhole import NAME_NET, NAME_NET6, OVERFLOW

    records, log = sinkhole.events, sinkhole.log
    events = result.behaviour.setdefault("events", [])
    mine = [sinkhole_events.as_behaviour_event(record) for record in records]
    sinkhole_events.attribute(events, mine)
    events.extend(mine)
    lost = dict(log.lost)
    result.behaviour["sinkhole"] = {
        "dns_queries": log.seen["dns"], "tcp_connections": log.seen["tcp"],
        "udp_datagrams": log.seen["udp"], "kept": len(records), "dropped": sum(lost.values()),
        "lost": lost, "overflow_answers": sinkhole.names.overflow,
        "names": sorted({r["dns"]["query"] for r in records if r.get("dns")})[:100]}
    if lost:
        events.append(sinkhole_events.lost_event(lost))
        result.notes.append("sinkhole: not everything the job sent is on record: " + "; ".join(
            f"{count} {reason}" for reason, count in lost.items()))
    if sinkhole.names.overflow:
        result.notes.append(f"sinkhole: {sinkhole.names.overflow} lookup(s) past the "
                            "table's names were all answered "
                            f"{NAME_NET[OVERFLOW]} / {NAME_NET6[OVERFLOW]}; connections to it "
                            "cannot be named")
    result.assurance["network"] = ("sinkhole: no route out; every DNS query answered and "
                                   "every TCP/UDP attempt recorded by detain outside the "
                                   "sandbox" + ("" if not lost else " (some only counted)"))


def as_behaviour_event(attempt: dict[str, Any]) -> dict[str, Any]:
    """A proxy attempt in the report's event shape (see report/events.py)."""
    verdict = "allowed" if attempt["allowed"] else "refused"
    target = f"{attempt['host']}:{attempt['port']}" if attempt["host"] else "(unparsable)"
    via = f" via {attempt['address']}" if attempt["allowed"] and attempt["address"] else ""
    return {
        "seq": None, "t": None, "ts": attempt["ts"], "event": "proxy.connect",
        "category": "network", "severity": "low" if attempt["allowed"] else "high",
        "file": None, "line": None, "detail": dict(attempt),
        "summary": f"{attempt['method']} {target} {verdict}{via}: {attempt['reason']}",
        "provenance": "kernel/runtime", "suspect": None,
    }


def start(backend: Any, ctx: Any) -> EgressSession | None:
    """The run's egress session, or None when the policy allows no network at all."""
    rules, wants_sinkhole = ctx.policy.allow_hosts, ctx.policy.sinkhole
    if not rules and not wants_sinkhole:
        return None
    if rules and not getattr(backend, "own_network_namespace", False):
        raise ProtectionError(f"a network allow-list needs detain's proxy in the sandbox's "
                              f"own network namespace, which {backend.name} cannot offer "
                              "yet; use --backend bwrap")
    if wants_sinkhole and not getattr(backend, "sinkhole_network", False):
        raise ProtectionError(f"--network sinkhole is not supported by the {backend.name} "
                              "backend (supported: bwrap, as root; landlock and process share "
                              "the host's network); use --backend bwrap or --network none")
    sinkhole = None
    if wants_sinkhole:
        from .sinkhole import Sinkhole

        sinkhole = Sinkhole()
    session = EgressSession(rules, ctx.run.subdir("net", 0o755), sinkhole)
    try:
        for part in (sinkhole, session.proxy):
            if part is not None:
                part.start()
    except BaseException:
        session.stop()
        raise
    return session

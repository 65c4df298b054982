"""One run's egress: the proxy started for it, how the sandbox reaches it, what it saw.

The base backend calls `start` after preparing a run and `finish` once the sandbox is gone.
A backend opts in by declaring `own_network_namespace = True` and showing `host_dir`
read-only at `GUEST_NET_DIR` inside; the launcher then forwards 127.0.0.1:PROXY_PORT (in
the sandbox's own namespace, where nothing else listens) to the socket there. A backend
that shares the host's network cannot offer an allow-list this way, and asking for one
there is an error, not a silent "allow everything" (DESIGN rule 4).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import ProtectionError
from . import GUEST_NET_DIR
from .proxy import Proxy
from .rules import HostRule, Resolver, system_resolver

SOCKET_NAME = "proxy.sock"
PROXY_PORT = 3128
# The host-side resolver every proxy uses; tests replace it to simulate DNS answers.
resolver: Resolver = system_resolver


class EgressSession:
    """The proxy of one run and the options that connect the sandbox to it."""

    def __init__(self, rules: tuple[HostRule, ...], host_dir: Path) -> None:
        self.rules = rules
        self.host_dir = host_dir
        self.proxy = Proxy(rules, host_dir / SOCKET_NAME, resolver=resolver)
        self._stopped = False

    def launcher_options(self) -> list[str]:
        return ["--proxy", f"{PROXY_PORT}:{GUEST_NET_DIR}/{SOCKET_NAME}"]

    def stop(self) -> None:
        if not self._stopped:
            self._stopped = True
            self.proxy.stop()

    def finish(self, result: Any) -> None:
        """Stop the proxy and put every attempt it saw into the result's behaviour."""
        self.stop()
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
                                       f"({len(self.rules)} rule(s)); no direct route")


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
    rules = ctx.policy.allow_hosts
    if not rules:
        return None
    if not getattr(backend, "own_network_namespace", False):
        raise ProtectionError(f"a network allow-list needs detain's proxy in the sandbox's "
                              f"own network namespace, which {backend.name} cannot offer "
                              "yet; use --backend bwrap")
    session = EgressSession(rules, ctx.run.subdir("net", 0o755))
    session.proxy.start()
    return session

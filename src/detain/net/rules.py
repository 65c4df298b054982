"""The network allow-list: which host names and ports a sandbox may reach through the proxy.

A rule is `host`, `host:port`, `*.suffix[:port]`, or an IP literal with an optional port
(`127.0.0.1:8080`, `[::1]:8080`). Without a port a rule allows 80 and 443 only, so that
listing a web host does not open its SSH or database ports. There is no rule for "any
host": the proxy must never become an open relay.

The verdict is taken on the host, in two steps: the *name* must match a rule, then every
address it resolves to is checked. Addresses that are not globally routable (loopback,
private, link-local, CGNAT, multicast, reserved) are refused unless the address itself is
listed, which defeats DNS rebinding: an allowed name that resolves to 127.0.0.1 reaches
nothing. The proxy then connects to exactly the address that was checked.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from ..errors import PolicyError

DEFAULT_PORTS = (80, 443)
_LABEL = re.compile(r"^[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?$")
Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], list[str]]


def parse_ip(text: str) -> Address | None:
    """A strict IP literal (IPv4-mapped IPv6 folded to IPv4), or None."""
    try:
        address = ipaddress.ip_address(text.strip("[]"))
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def normalise_host(host: str) -> str:
    """A lower-case host name or canonical IP text; raises ValueError when malformed.

    Numeric forms that `inet_aton` would take as IPv4 (`2130706433`, `127.1`, `0x7f.1`)
    are refused outright rather than guessed at.
    """
    address = parse_ip(host)
    if address is not None:
        return str(address)
    name = host.lower().rstrip(".")
    if not name or len(name) > 253 or not name.isascii():
        raise ValueError(f"invalid host name {host!r}")
    labels = name.split(".")
    if not all(_LABEL.match(label) for label in labels):
        raise ValueError(f"invalid host name {host!r}")
    if labels[-1].isdigit() or labels[-1].startswith("0x"):
        raise ValueError(f"{host!r} looks like a numeric address but is not a valid IP literal")
    return name


def split_host_port(text: str, default: int | None) -> tuple[str, int | None]:
    """`host`, `host:port`, `[v6]:port` or a bare IPv6 literal → (host, port)."""
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ValueError(f"malformed address {text!r}")
        port_text = rest[1:] if rest else ""
    elif text.count(":") > 1:
        host, port_text = text, ""
    else:
        host, _, port_text = text.partition(":")
    if not port_text:
        return host, default
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"invalid port in {text!r}")
    return host, int(port_text)


@dataclass(frozen=True)
class HostRule:
    """One allow-list entry; `port` None means the web ports 80 and 443."""

    host: str
    port: int | None = None
    wildcard: bool = False

    @classmethod
    def parse(cls, spec: str) -> HostRule:
        text = str(spec).strip()
        wildcard = text.startswith("*.")
        try:
            host, port = split_host_port(text[2:] if wildcard else text, None)
            host = normalise_host(host)
        except ValueError as exc:
            raise PolicyError(f"allow-list entry {spec!r}: {exc}; expected HOST, HOST:PORT, "
                              "*.DOMAIN[:PORT] or an IP literal") from None
        if wildcard and (parse_ip(host) is not None or "." not in host):
            raise PolicyError(f"allow-list entry {spec!r}: a wildcard needs a domain with at "
                              "least two labels, such as *.example.org")
        return cls(host, port, wildcard)

    @property
    def address(self) -> Address | None:
        return None if self.wildcard else parse_ip(self.host)

    def allows_port(self, port: int) -> bool:
        return port in DEFAULT_PORTS if self.port is None else port == self.port

    def allows_name(self, name: str, port: int) -> bool:
        if not self.allows_port(port):
            return False
        if self.wildcard:
            return name.endswith("." + self.host)
        return name == self.host

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return ("*." if self.wildcard else "") + host + (f":{self.port}" if self.port else "")


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    reason: str
    addresses: tuple[str, ...] = ()


def parse_rules(items: Iterable[str] | str) -> tuple[HostRule, ...]:
    values = [items] if isinstance(items, str) else list(items)
    return tuple(dict.fromkeys(HostRule.parse(str(item)) for item in values))


def system_resolver(host: str, port: int) -> list[str]:
    """The host's own resolver: the sandbox never talks to DNS itself."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def _listed_address(rules: Iterable[HostRule], address: Address, port: int) -> bool:
    return any(rule.address == address and rule.allows_port(port) for rule in rules)


def _public(address: Address) -> bool:
    return address.is_global and not address.is_multicast


def decide(rules: tuple[HostRule, ...], host: str, port: int,
           resolver: Resolver = system_resolver) -> Verdict:
    """Whether `host:port` may be reached, and at which addresses."""
    try:
        name = normalise_host(host)
    except ValueError as exc:
        return Verdict(False, str(exc))
    literal = parse_ip(name)
    if literal is not None:
        if _listed_address(rules, literal, port):
            return Verdict(True, "IP literal listed", (name,))
        return Verdict(False, "IP literal not in the allow-list")
    if not any(rule.allows_name(name, port) for rule in rules):
        return Verdict(False, "host:port not in the allow-list")
    try:
        resolved = resolver(name, port)
    except (OSError, UnicodeError) as exc:
        return Verdict(False, f"DNS resolution failed on the host ({exc})")
    usable, refused = [], []
    for text in resolved:
        address = parse_ip(text)
        if address is None:
            continue
        if _public(address) or _listed_address(rules, address, port):
            usable.append(str(address))
        else:
            refused.append(str(address))
    if usable:
        return Verdict(True, "listed", tuple(usable))
    if refused:
        return Verdict(False, "resolves to non-public address "
                       f"{', '.join(refused)} (refused: possible DNS rebinding)")
    return Verdict(False, "DNS returned no usable address")

"""The package index the host is configured to use, as an allow-list and as mounts.

`detain package` installs inside the sandbox through pip, reaching only the index the
user already trusts: the one in pip's own configuration (PIP_INDEX_URL and friends, pip.conf
files), defaulting to PyPI. http(s) indexes become allow-list entries; `file://` indexes
and find-links directories become read-only mounts.

Mirrors and intercepting proxies often resolve to private addresses, which the proxy
refuses for any name (DNS rebinding). The index is configuration the user chose, so its
current addresses, as the host resolves them now, are pinned into the allow-list as IP
rules: later answers that point somewhere else are still refused.
"""

from __future__ import annotations

import configparser
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlsplit

from ..net import session
from ..net.rules import parse_ip, split_host_port

PYPI = "https://pypi.org/simple"
PYPI_FILES = "files.pythonhosted.org"
_KEYS = ("index-url", "extra-index-url", "find-links", "cert")


@dataclass
class IndexConfig:
    """pip's index settings: where pip looks, split into hosts to allow and dirs to mount."""

    index_urls: list[str] = field(default_factory=list)
    find_links: list[str] = field(default_factory=list)
    # the CA bundle pip is told to trust (a proxy that re-signs TLS, a private index): the
    # install phase's pip runs --isolated, so it is handed on explicitly
    cert: str | None = None

    @property
    def hosts(self) -> list[str]:
        """host[:port] of every http(s) index or find-links URL (PyPI brings its file host)."""
        found = []
        for url in [*self.index_urls, *self.find_links]:
            parts = urlsplit(url)
            if parts.scheme in ("http", "https") and parts.hostname:
                port = parts.port or (443 if parts.scheme == "https" else 80)
                host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
                found.append(host if port in (80, 443) else f"{host}:{port}")
                if parts.hostname == "pypi.org":
                    found.append(PYPI_FILES)
        return list(dict.fromkeys(found))

    @property
    def local_dirs(self) -> list[Path]:
        """Directories behind file:// URLs and plain-path find-links that exist."""
        dirs = []
        for url in [*self.index_urls, *self.find_links]:
            parts = urlsplit(url)
            path = unquote(parts.path) if parts.scheme == "file" else (
                url if not parts.scheme else "")
            if path and os.path.isdir(path):
                # A PEP 503 tree's project pages link to files beside `simple/`.
                resolved = Path(path).resolve()
                dirs.append(resolved.parent if resolved.name == "simple" else resolved)
        return list(dict.fromkeys(dirs))


def _config_files() -> list[Path]:
    """pip's config files in its own precedence order (lowest first)."""
    if "PIP_CONFIG_FILE" in os.environ:
        return [Path(os.environ["PIP_CONFIG_FILE"])]
    xdg_dirs = os.environ.get("XDG_CONFIG_DIRS", "/etc/xdg").split(":")
    files = [Path(d) / "pip" / "pip.conf" for d in reversed(xdg_dirs)] + [Path("/etc/pip.conf")]
    home = Path.home()
    config_home = Path(os.environ.get("XDG_CONFIG_HOME", home / ".config"))
    files += [home / ".pip" / "pip.conf", config_home / "pip" / "pip.conf"]
    if sys.prefix != sys.base_prefix:
        files.append(Path(sys.prefix) / "pip.conf")
    return files


def read_config() -> IndexConfig:
    """pip's effective index settings, read as pip does (files, then PIP_* variables).

    Read directly rather than by running `pip config`: nothing is executed, and the result
    does not depend on which pip is on PATH.
    """
    values: dict[str, str] = {}
    for path in _config_files():
        parser = configparser.RawConfigParser()
        try:
            parser.read(path, encoding="utf-8")
        except (configparser.Error, OSError, UnicodeDecodeError):
            continue
        for section in ("global", "download", "install"):
            if parser.has_section(section):
                for key in _KEYS:
                    if parser.has_option(section, key):
                        values[key] = parser.get(section, key)
    for key in _KEYS:
        env = os.environ.get("PIP_" + key.upper().replace("-", "_"))
        if env:
            values[key] = env
    config = IndexConfig()
    config.index_urls = [values.get("index-url", PYPI).split()[0]]
    config.index_urls += values.get("extra-index-url", "").split()
    config.find_links = values.get("find-links", "").split()
    cert = values.get("cert", "").strip()
    config.cert = cert if cert and os.path.isfile(cert) else None
    return config


def pin_hosts(hosts: list[str]) -> list[str]:
    """`hosts` plus, for each, the non-public addresses it resolves to now, as IP rules."""
    rules = list(hosts)
    for entry in hosts:
        host, port = split_host_port(entry, None)
        if parse_ip(host) is not None:
            continue
        try:
            addresses = session.resolver(host, port or 443)
        except OSError:
            continue
        for text in addresses:
            address = parse_ip(text)
            if address is not None and not address.is_global:
                literal = f"[{address}]" if address.version == 6 else str(address)
                rules.append(literal + (f":{port}" if port else ""))
    return list(dict.fromkeys(rules))

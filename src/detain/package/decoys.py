"""Decoy credentials for `detain package`: bait a stealer that only acts on what exists.

Much credential-stealing code checks first (`if os.path.exists("~/.aws/credentials")`),
so in an empty sandbox HOME it does nothing and looks clean. Every sandboxed phase of
`detain package` therefore runs with HOME holding plausible keys and tokens, and with
credential environment variables set: all of them fake (they name no real account), all
of them carrying one marker made fresh for each vetting, so that reading a decoy is a
`credentials read` and any copy of its content leaving the phase (sinkhole, proxy, a
process's argv) is recognised wherever it turns up, even hex- or base64-encoded.

The host writes the files before any sandbox starts, into a dir of the vetting's own temp
dir that each phase sees read-only at HOME: nothing inside the sandbox writes them, so no
event of the phase is detain's planting (package/own.py has nothing to set apart), and a
package cannot alter what the next phase finds.
"""

from __future__ import annotations

import base64
import binascii
import json
import secrets
import string
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ..policy import Mount

HOME = "/home/dev"  # HOME inside every phase: an ordinary developer's, not /scratch
# Windows stealers find their places through these variables, set too (a Linux shell that
# has them is odd, but a stealer that bails out on a missing variable shows nothing)
APPDATA, LOCALAPPDATA = "AppData/Roaming", "AppData/Local"
GENERIC_DIRS = (".config", "AppData", APPDATA, LOCALAPPDATA)  # listing them is not a read
ALPHABET = string.ascii_letters + string.digits
SCAN_CAP = 64 << 10  # characters of one event searched for the marker
# How the phase script learns the decoy variables' names (guest/package_phase.py's
# DECOYS_VARIABLE): it takes them out of the environment before the package's code runs.
DECOYS_VARIABLE = "DETAIN_DECOYS"


@dataclass(frozen=True)
class Decoys:
    """One vetting's decoys: the host dir shown at HOME, the variables, and the marker."""

    marker: str
    home: Path
    files: tuple[str, ...]  # relative to HOME
    env: dict[str, str] = field(default_factory=dict)

    def mount(self) -> Mount:
        return Mount(self.home, HOME)

    def environment(self) -> dict[str, str]:
        """The phase's environment additions: HOME, the decoy variables, and which of them
        the in-process hook must watch whatever they are called (DATABASE_URL looks like
        no credential by its name)."""
        return {"HOME": HOME, **self.env, DECOYS_VARIABLE: ",".join(self.secret_names())}

    def secret_names(self) -> list[str]:
        """The variables that are bait: those carrying the marker (APPDATA is a path,
        AWS_DEFAULT_REGION a region: libraries read them for good reasons)."""
        return sorted(name for name, value in self.env.items() if self.marker in value)

    def is_secret(self, name: str) -> bool:
        """Whether an environment variable read by this name read planted bait."""
        return name in self.env and self.marker in self.env[name]

    def without(self, names: Iterable[str]) -> Decoys:
        """These decoys with no variable of `names` (the user's own --env wins over one)."""
        drop = set(names)
        return replace(self, env={k: v for k, v in self.env.items() if k not in drop})

    def describe(self) -> dict[str, Any]:
        """What the report says was planted (the marker too: grep any log for it)."""
        return {"home": HOME, "files": [f"~/{f}" for f in self.files],
                "environment": sorted(self.env), "marker": self.marker}

    def is_decoy(self, path: str) -> bool:
        """Whether a path the sandbox named is a planted file or a dir of them (~/.ssh
        listed), not ~ or the generic dirs (~/.config) themselves."""
        name = path[len(HOME) + 1:].rstrip("/") if path.startswith(HOME + "/") else ""
        return bool(name) and name not in GENERIC_DIRS and any(
            f == name or f.startswith(name + "/") for f in self.files)

    def carried_by(self, event: dict[str, Any]) -> bool:
        """Whether the marker, plain or encoded, is anywhere in the event's detail."""
        text = json.dumps(event.get("detail") or {}, default=str)[:SCAN_CAP].lower()
        return any(form in text for form in forms(self.marker))


def forms(marker: str) -> tuple[str, ...]:
    """The marker as it may travel, lower-cased: plain, hex, and the stable middle of its
    base64 (standard and URL-safe) at each of the three byte alignments."""
    raw = marker.encode()
    found = {marker.lower(), binascii.hexlify(raw).decode()}
    for pad in range(3):
        for encode in (base64.b64encode, base64.urlsafe_b64encode):
            text = encode(b"\0" * pad + raw).decode()
            # characters fed only by the marker's own bytes: skip the padding's, drop the tail
            start = (pad * 8 + 5) // 6
            found.add(text[start:start + (len(raw) * 8) // 6 - 2].lower())
    return tuple(sorted(found))


def plant(dest: Path) -> Decoys:
    """Write a decoy HOME under `dest` (a new dir) and return what was planted."""
    marker = "DECOY" + secrets.token_hex(5).upper()  # 15 characters, [A-Z0-9]

    def filler(size: int, alphabet: str = ALPHABET) -> str:
        return "".join(secrets.choice(alphabet) for _ in range(size))

    key_id = f"AKIA{marker}{filler(1, string.ascii_uppercase)}"  # 20, like a real one
    secret = f"{marker}{filler(25)}"  # 40
    github = f"ghp_{marker}{filler(21)}"  # 40
    pypi = f"pypi-AgEIcHlwaS5vcmc{marker}{filler(40)}"
    key_body = "\n".join(f"{filler(30)}{marker}{filler(25)}" for _ in range(6))
    files = {
        ".aws/credentials": f"[default]\naws_access_key_id = {key_id}\n"
                            f"aws_secret_access_key = {secret}\n",
        ".aws/config": "[default]\nregion = eu-west-1\noutput = json\n",
        ".ssh/id_rsa": "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAABG5vbmU"
                       f"AAAAEbm9uZQ\n{key_body}\n-----END OPENSSH PRIVATE KEY-----\n",
        ".ssh/id_rsa.pub": f"ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABgQ{marker}{filler(60)} "
                           "dev@workstation\n",
        ".ssh/id_ed25519": "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAABG5v"
                           f"bmUAAAAEbm9uZQ\n{key_body[:170]}\n-----END OPENSSH PRIVATE KEY"
                           "-----\n",
        ".ssh/known_hosts": "github.com ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UO"
                            "oqKLsabgH5C9okWi0dh2l9GKJl\n",
        ".netrc": f"machine github.com\n  login dev\n  password {github}\n",
        ".pypirc": "[distutils]\nindex-servers =\n    pypi\n\n[pypi]\nusername = __token__\n"
                   f"password = {pypi}\n",
        ".git-credentials": f"https://dev:{github}@github.com\n",
        ".docker/config.json": json.dumps({"auths": {"https://index.docker.io/v1/": {
            "auth": base64.b64encode(f"dev:{secret}".encode()).decode(),
            "identitytoken": f"dckr_pat_{marker}{filler(12)}"}}}, indent=1) + "\n",
        ".config/gcloud/application_default_credentials.json": json.dumps({
            "client_id": "764086051850-6qr4p6gpi6hn506pt8ejuq83di341hur.apps.googleuser"
                         "content.com",
            "client_secret": f"d-FL95Q{marker}{filler(4)}",
            "refresh_token": f"1//0{marker}{filler(60)}", "type": "authorized_user"},
            indent=1) + "\n",
        ".config/gcloud/active_config": "default\n",
        ".config/gh/hosts.yml": f"github.com:\n    oauth_token: {github}\n    user: dev\n"
                                "    git_protocol: https\n",
        ".bitcoin/wallet.dat": f"\0\0\0\0b1\x05\0{marker}{filler(40)}\n",
        ".electrum/wallets/default_wallet": json.dumps({"keystore": {"type": "bip32",
                                                        "xprv": f"xprv9s21Z{marker}{filler(90)}"}}),
        ".config/Exodus/exodus.wallet/seed.seco": f"SECO\0{marker}{filler(60)}\n",
    }
    # a browser profile, where Linux and (through %LOCALAPPDATA%) Windows stealers look
    for profile in (".config/google-chrome/Default", f"{LOCALAPPDATA}/Google/Chrome/User Data"
                    "/Default", ".config/chromium/Default"):
        for name in ("Login Data", "Cookies", "Web Data"):
            files[f"{profile}/{name}"] = (f"SQLite format 3\0https://accounts.google.com dev "
                                          f"{marker}{filler(32)}\n")
    files[f"{APPDATA}/discord/Local Storage/leveldb/000005.ldb"] = (
        f"_https://discord.com\0\x01token\0\"mfa.{marker}{filler(68)}\"\n")
    home = dest / "home"
    for name, text in files.items():
        path = home / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        path.chmod(0o644)  # readable by the sandbox's uid, whichever it is
    for path in [home, *home.rglob("*")]:
        if path.is_dir():
            path.chmod(0o755)
    env = {"AWS_ACCESS_KEY_ID": key_id, "AWS_SECRET_ACCESS_KEY": secret,
           "AWS_DEFAULT_REGION": "eu-west-1", "GITHUB_TOKEN": github,
           "NPM_TOKEN": f"npm_{marker}{filler(21)}",
           "OPENAI_API_KEY": f"sk-proj-{marker}{filler(33)}",
           "DATABASE_URL": f"postgres://app:{marker}@db.internal:5432/app",
           "APPDATA": f"{HOME}/{APPDATA}", "LOCALAPPDATA": f"{HOME}/{LOCALAPPDATA}"}
    return Decoys(marker, home, tuple(sorted(files)), env)

"""The one declarative description of what a run may do.

Who may set which value, and in what order, is `config.py`'s job. Every value is validated
here, so backends can trust what they receive and a bad value becomes one clear line, not a
traceback.
"""

from __future__ import annotations

import os
import posixpath
import re
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

from .errors import PolicyError
from .units import format_size, parse_seconds, parse_size

TYPE_CHECKING = False  # not typing's: importing typing slows every CLI start-up
if TYPE_CHECKING:
    from typing import Any

    from .net.rules import HostRule

PROFILES = {
    # The seeds' recommendation: isolated mode, no site, dev-mode checks, warnings fatal.
    "strict": ("-I", "-S", "-X", "dev", "-W", "error"),
    "isolated": ("-I",),
}

SCRATCH = "/scratch"
# Paths inside the sandbox that detain itself populates; user mounts may not shadow them.
RESERVED = ("/", "/usr", "/bin", "/sbin", "/lib", "/lib64", "/etc", "/proc", "/dev", "/sys",
            "/tmp", "/detain", SCRATCH)
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# Separators of some engine's mount syntax (podman/docker `--mount k=v,k=v`, `-v a:b:ro`,
# quoting): a sandbox path holding one could add options to a spec detain builds.
_ENGINE_SYNTAX = frozenset(',:="\'\\')


def sandbox_path(value: str, what: str) -> str:
    """A normalised absolute path inside the sandbox; relative paths are under /scratch.

    One rule for every backend: printable, no character any engine's mount syntax treats
    as a separator, no '..', so the same path means the same place wherever it is passed.
    """
    if not value or "\0" in value:
        raise PolicyError(f"{what}: empty or NUL-containing path {value!r}")
    bad = sorted({c for c in value if c in _ENGINE_SYNTAX or not c.isprintable()})
    if bad:
        raise PolicyError(f"{what}: sandbox paths may not contain {' '.join(map(repr, bad))}; "
                          "pick a plain path such as /mnt/input")
    # "//tmp" is not "/tmp" to normpath (POSIX keeps two leading slashes) but is to
    # every mount: one leading slash, always, or reserved paths could be mounted over.
    path = "/" + value.lstrip("/") if value.startswith("/") else posixpath.join(SCRATCH, value)
    if ".." in path.split("/"):
        raise PolicyError(f"{what}: '..' is not allowed in sandbox paths ({value!r})")
    return posixpath.normpath(path)


def host_path(path: Path, what: str, *, writing: bool = False) -> Path:
    """`path` resolved, refusing a way there that another user controls.

    Root copying into /tmp/results, where another user had planted a symlink to
    /root/.ssh, wrote there. So every symlink on the way must belong to the caller or to
    root; and where detain will write (`writing`), every directory on the resolved path
    too, unless it is sticky (like /tmp: nobody else can move what the caller puts there).
    """
    trusted = (os.geteuid(), 0)
    current, pending, hops = Path("/"), list(Path(os.path.abspath(path)).parts[1:]), 0
    while pending:
        candidate = current / pending.pop(0)
        try:
            info = os.lstat(candidate)
        except OSError:  # the rest does not exist yet: detain creates it, as the caller
            return Path(os.path.normpath(candidate.joinpath(*pending)))
        if stat.S_ISLNK(info.st_mode):
            hops += 1
            if info.st_uid not in trusted or hops > 40:
                raise PolicyError(f"{what}: {candidate} is another user's symlink (or a "
                                  "loop); pick a host path no one else can redirect")
            target = Path(os.readlink(candidate))
            if target.is_absolute():
                current, pending = Path("/"), [*target.parts[1:], *pending]
            else:
                pending = [*target.parts, *pending]
            continue
        if writing and stat.S_ISDIR(info.st_mode) and not info.st_mode & stat.S_ISVTX and (
                info.st_uid not in trusted or info.st_mode & (stat.S_IWGRP | stat.S_IWOTH)):
            raise PolicyError(f"{what}: {candidate} belongs to or is writable by another "
                              "user; pick a host directory only you (or root) control")
        current = candidate
    return Path(os.path.normpath(current))


@dataclass(frozen=True)
class Mount:
    """A host path shown inside the sandbox, read-only unless `writable`."""

    host: Path
    sandbox: str
    writable: bool = False

    @classmethod
    def parse(cls, spec: str) -> Mount:
        parts = spec.split(":")
        writable = False
        if len(parts) == 3 and parts[2] in ("rw", "ro"):
            writable = parts.pop() == "rw"
        if len(parts) != 2 or not parts[0] or not parts[1]:
            raise PolicyError(f"--mount {spec!r}: expected HOST:SANDBOX or HOST:SANDBOX:rw")
        host = Path(parts[0]).expanduser()
        if not host.exists():
            raise PolicyError(f"--mount {spec!r}: host path {host} does not exist")
        host = host_path(host, f"--mount {spec!r}")
        if not parts[1].startswith("/"):
            raise PolicyError(f"--mount {spec!r}: the sandbox path must be absolute")
        target = sandbox_path(parts[1], f"--mount {spec!r}")
        for reserved in RESERVED:
            if target == reserved or (reserved != "/" and target.startswith(reserved + "/")
                                      and reserved != SCRATCH):
                raise PolicyError(f"--mount {spec!r}: {target} is managed by detain; "
                                  "pick another sandbox path such as /mnt/input")
        return cls(host=host.resolve(), sandbox=target, writable=writable)


@dataclass(frozen=True)
class CopyOut:
    """A path in the sandbox's scratch dir brought back to a host directory after the run."""

    sandbox: str
    host_dir: Path

    @classmethod
    def parse(cls, spec: str) -> CopyOut:
        source, sep, dest = spec.rpartition(":")
        if not sep or not source or not dest:
            raise PolicyError(f"--copy-out {spec!r}: expected SANDBOX_PATH:HOST_DIR")
        path = sandbox_path(source, f"--copy-out {spec!r}")
        if path != SCRATCH and not path.startswith(SCRATCH + "/"):
            raise PolicyError(f"--copy-out {spec!r}: only paths under {SCRATCH} (the writable "
                              "scratch dir, also the working directory) can be copied out")
        return cls(sandbox=path, host_dir=host_path(Path(dest).expanduser(),
                                                     f"--copy-out {spec!r}", writing=True))


@dataclass(frozen=True)
class Limits:
    wall_seconds: float = 30.0
    cpu_seconds: float = 30.0
    memory_bytes: int = 512 << 20
    processes: int = 64
    disk_bytes: int = 256 << 20
    output_bytes: int = 4 << 20
    open_files: int = 256
    # "auto": a memory or disk limit that was set (`asked`) must hold for all the job's
    # processes or files together, or the run is refused; defaults hold as well as the
    # host allows, and the result says how. "total": every one must. "per-process":
    # per-process memory and a per-file disk cap are accepted where nothing better exists.
    scope: str = "auto"
    asked: frozenset[str] = frozenset()  # the limits some source set (not a setting)


@dataclass(frozen=True)
class Policy:
    """What a run may do. Immutable; derive variants with `Policy.merge(...)`."""

    backend: str = "auto"
    min_level: int = 2
    profile: str = "strict"
    python: str | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    limits: Limits = field(default_factory=Limits)
    mounts: tuple[Mount, ...] = ()
    copy_out: tuple[CopyOut, ...] = ()
    requirements: Path | None = None
    with_packages: tuple[str, ...] = ()
    wheelhouse: Path | None = None
    allow_hosts: tuple[HostRule, ...] = ()  # empty: no network at all
    sinkhole: bool = False  # everything else is answered by detain's recorder (net/sinkhole)
    image: str | None = None  # a local container image whose python3 runs the job
    trace: str | None = None  # "syscalls": keep the sandbox kernel's syscall trace

    @property
    def wants_packages(self) -> bool:
        """Whether the job asked for third-party packages (installed inside the sandbox)."""
        return self.requirements is not None or bool(self.with_packages)

    @property
    def network(self) -> str:
        """"none", "allow-list" when hosts are reachable through detain's proxy,
        "sinkhole", or "allow-list+sinkhole" (the rest answered by the recorder)."""
        modes = ["allow-list"] * bool(self.allow_hosts) + ["sinkhole"] * self.sinkhole
        return "+".join(modes) or "none"

    @property
    def interpreter_flags(self) -> tuple[str, ...]:
        return PROFILES[self.profile]

    def merge(self, values: Mapping[str, Any], source: str) -> Policy:
        """Apply flat `key = value` settings (the TOML / CLI vocabulary) over this policy."""
        policy, limits = {}, {}
        for key, value in values.items():
            if value is None:
                continue
            name = key.replace("-", "_")
            if name not in _SETTERS:
                known = ", ".join(sorted(k.replace("_", "-") for k in _SETTERS))
                raise PolicyError(f"{source}: unknown setting {key!r} (known: {known})")
            target, attr, convert = _SETTERS[name]
            converted = convert(value, f"{source}: {key}")
            if attr is None:  # a setting that decides several fields at once
                policy.update(converted)
            else:
                (limits if target == "limits" else policy)[attr] = converted
        if limits:
            limits["asked"] = self.limits.asked | frozenset(limits)
        merged = replace(self, **policy)
        if limits:
            merged = replace(merged, limits=replace(self.limits, **limits))
        return merged

    def describe(self) -> dict[str, Any]:
        """A JSON-ready view, used by Result and reports."""
        lim = self.limits
        return {
            "backend": self.backend, "min_level": self.min_level, "network": _describe_network(
                self.allow_hosts, self.sinkhole),
            "profile": self.profile, "interpreter_flags": list(self.interpreter_flags),
            "python": self.python, "env": sorted(self.env),
            "limits": {"timeout": lim.wall_seconds, "cpu": lim.cpu_seconds,
                       "memory": format_size(lim.memory_bytes), "processes": lim.processes,
                       "disk": format_size(lim.disk_bytes),
                       "output": format_size(lim.output_bytes), "open_files": lim.open_files},
            "mounts": [f"{m.host}:{m.sandbox}:{'rw' if m.writable else 'ro'}" for m in self.mounts],
            "copy_out": [f"{c.sandbox}:{c.host_dir}" for c in self.copy_out],
            "requirements": str(self.requirements) if self.requirements else None,
            "with_packages": list(self.with_packages),
            "wheelhouse": str(self.wheelhouse) if self.wheelhouse else None,
            "image": self.image, "trace": self.trace,
        }


def _choice(options: tuple[str, ...]):
    def convert(value: Any, what: str) -> str:
        if value not in options:
            raise PolicyError(f"{what}: expected one of {', '.join(options)}, got {value!r}")
        return value
    return convert


def _network(value: Any, what: str) -> dict[str, Any]:
    """`"none"`, `"sinkhole"`, or `{allow = ["host", "*.domain:443", ...]}` (a bare list is
    taken too), optionally with `sinkhole = true` for everything the list does not name."""
    if value in ("none", "sinkhole"):
        return {"allow_hosts": (), "sinkhole": value == "sinkhole"}
    sinkhole = False
    if isinstance(value, Mapping) and set(value) in ({"allow"}, {"allow", "sinkhole"}):
        sinkhole = value.get("sinkhole", False)
        value = value["allow"]
    if (isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value)
            and isinstance(sinkhole, bool)):
        return {"allow_hosts": _allow_hosts(value, what), "sinkhole": sinkhole}
    raise PolicyError(f"{what}: only network = \"none\", \"sinkhole\" or {{allow = [\"host\", "
                      f"\"*.domain:443\"], sinkhole = true|false}} are accepted, got {value!r}")


def _describe_network(allow_hosts: tuple[HostRule, ...], sinkhole: bool) -> Any:
    if not allow_hosts:
        return "sinkhole" if sinkhole else "none"
    allow = {"allow": [str(r) for r in allow_hosts]}
    return {**allow, "sinkhole": True} if sinkhole else allow


def _allow_hosts(value: Any, what: str) -> tuple[HostRule, ...]:
    from .net.rules import parse_rules  # its patterns compile only when a policy has rules

    try:
        return parse_rules(value)
    except PolicyError as exc:
        raise PolicyError(f"{what}: {exc}") from None


def _backend(value: Any, what: str) -> str:
    from .backends import BACKENDS  # the registry only names modules; importing it is cheap
    if not isinstance(value, str) or (value != "auto" and value not in BACKENDS):
        raise PolicyError(f"{what}: unknown backend {value!r}; choose auto or one of "
                          f"{', '.join(BACKENDS)} (see `detain doctor`)")
    return value


def _level(value: Any, what: str) -> int:
    if isinstance(value, bool) or not str(value).strip().isdigit() or not 0 <= int(value) <= 4:
        raise PolicyError(f"{what}: expected a level from 0 to 4, got {value!r}")
    return int(value)


def _count(low: int, high: int):
    def convert(value: Any, what: str) -> int:
        if isinstance(value, bool) or not str(value).strip().isdigit():
            raise PolicyError(f"{what}: expected a whole number, got {value!r}")
        number = int(value)
        if not low <= number <= high:
            raise PolicyError(f"{what}: must be between {low} and {high}, got {number}")
        return number
    return convert


def _bounded_size(low: int):
    def convert(value: Any, what: str) -> int:
        number = parse_size(value, what)
        if number < low:
            raise PolicyError(f"{what}: must be at least {format_size(low)}, got {value!r}")
        return number
    return convert


def _python(value: Any, what: str) -> str:
    path = Path(str(value)).expanduser()
    if not path.is_file() or not os.access(path, os.X_OK):
        raise PolicyError(f"{what}: {value!r} is not an executable file; pass the path of a "
                          "python3 interpreter")
    return str(path.absolute())


def _env(value: Any, what: str) -> dict[str, str]:
    if isinstance(value, (list, tuple)):
        pairs = {}
        for item in value:
            name, sep, val = str(item).partition("=")
            if not sep:
                raise PolicyError(f"{what}: expected NAME=VALUE, got {item!r}")
            pairs[name] = val
        value = pairs
    if not isinstance(value, Mapping):
        raise PolicyError(f"{what}: expected a table of NAME = \"value\"")
    for name, val in value.items():
        if not _ENV_NAME.match(str(name)) or not isinstance(val, str) or "\0" in val:
            raise PolicyError(f"{what}: invalid variable {name!r}")
    return dict(value)


def _items(value: Any, what: str) -> list:
    """A setting that takes one string or a list of them."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, (list, tuple)):
        return list(value)
    raise PolicyError(f"{what}: expected a string or a list of strings, got {value!r}")


def _mounts(value: Any, what: str) -> tuple[Mount, ...]:
    items = _items(value, what)
    return tuple(Mount.parse(str(item)) for item in items)


def _copy_out(value: Any, what: str) -> tuple[CopyOut, ...]:
    items = _items(value, what)
    return tuple(CopyOut.parse(str(item)) for item in items)


# A requirement as pip reads it from a requirements line: a name, extras, a version
# specifier and markers. No '-' option anywhere (it would be a pip option such as
# --index-url or -r /some/file) and no line breaks (they would add lines to the file).
_REQUIREMENT = re.compile(r"^(?!.*\s-)[A-Za-z0-9][A-Za-z0-9._-]*(\[[A-Za-z0-9._, -]*\])?"
                          r"[^\n\r\0]*$")
REQUIREMENTS_CAP = 1 << 20


def _requirements(value: Any, what: str) -> Path:
    path = Path(str(value)).expanduser()
    if not path.is_file() or not os.access(path, os.R_OK):
        raise PolicyError(f"{what}: {value!r} is not a readable requirements file")
    if path.stat().st_size > REQUIREMENTS_CAP:
        raise PolicyError(f"{what}: {value!r} is larger than {format_size(REQUIREMENTS_CAP)}")
    return path.resolve()


def _packages(value: Any, what: str) -> tuple[str, ...]:
    items = _items(value, what)
    for item in items:
        if not isinstance(item, str) or not _REQUIREMENT.match(item.strip()):
            raise PolicyError(f"{what}: {item!r} is not a requirement such as 'name' or "
                              "'name>=1.2' (pip options are not accepted here)")
    return tuple(item.strip() for item in items)


def _wheelhouse(value: Any, what: str) -> Path:
    path = Path(str(value)).expanduser()
    if not path.is_dir() or not os.access(path, os.R_OK | os.X_OK):
        raise PolicyError(f"{what}: {value!r} is not a readable directory of wheels")
    return path.resolve()


_IMAGE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/:@-]{0,254}$")


def _image(value: Any, what: str) -> str:
    """A local image reference; never starts with '-', so an engine cannot read an option."""
    if not isinstance(value, str) or not _IMAGE.match(value):
        raise PolicyError(f"{what}: {value!r} is not an image name such as 'python:3.12-slim'")
    return value


_SETTERS = {
    "backend": ("policy", "backend", _backend),
    "min_level": ("policy", "min_level", _level),
    "network": ("policy", None, _network),
    "allow_host": ("policy", "allow_hosts", _allow_hosts),
    "profile": ("policy", "profile", _choice(tuple(PROFILES))),
    "python": ("policy", "python", _python),
    "env": ("policy", "env", _env),
    "mount": ("policy", "mounts", _mounts),
    "copy_out": ("policy", "copy_out", _copy_out),
    "requirements": ("policy", "requirements", _requirements),
    "with_packages": ("policy", "with_packages", _packages),
    "wheelhouse": ("policy", "wheelhouse", _wheelhouse),
    "image": ("policy", "image", _image),
    "trace": ("policy", "trace", _choice(("syscalls",))),
    "timeout": ("limits", "wall_seconds", parse_seconds),
    "cpu": ("limits", "cpu_seconds", parse_seconds),
    "memory": ("limits", "memory_bytes", _bounded_size(32 << 20)),
    "processes": ("limits", "processes", _count(1, 100000)),
    "disk": ("limits", "disk_bytes", _bounded_size(1 << 20)),
    "output": ("limits", "output_bytes", _bounded_size(1024)),
    "open_files": ("limits", "open_files", _count(16, 65536)),
    "limits_scope": ("limits", "scope", _choice(("total", "per-process"))),
}
assert {f.name for f in fields(Limits)} - {"asked"} == {
    s[1] for s in _SETTERS.values() if s[0] == "limits"}


def load_toml(path: Path, section: tuple[str, ...] = ()) -> dict[str, Any]:
    """Read a policy table from a TOML file; a missing section means no settings."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PolicyError(f"policy file {path} does not exist") from None
    except (ValueError, OSError) as exc:  # UnicodeDecodeError included
        raise PolicyError(f"{path}: not a readable TOML file ({exc})") from None
    return parse_toml(text, str(path), section)


def parse_toml(text: str, source: str, section: tuple[str, ...] = ()) -> dict[str, Any]:
    """The table at `section` of TOML text; a missing section means no settings."""
    if section and section[-1] not in text:
        return {}  # most pyproject.toml files say nothing to detain: skip the parser
    import tomllib

    try:
        data = tomllib.loads(text)
    except ValueError as exc:  # TOMLDecodeError
        raise PolicyError(f"{source}: not a readable TOML file ({exc})") from None
    for key in section:
        data = data.get(key, {})
        if not isinstance(data, dict):
            raise PolicyError(f"{source}: [{'.'.join(section)}] must be a table")
    return data

"""Who may configure a run: the caller, fully; the code under test, only to tighten.

The caller is trusted. Their sources, in order (later wins): defaults, the user's own
config file (`$XDG_CONFIG_HOME/detain/policy.toml`), an explicit `--policy FILE`, flags.

Everything that ships with the code under test is hostile input, its pyproject.toml
included: a `[tool.detain]` table there once named a host interpreter that detain then
executed as the caller, before any sandbox existed. So a project's table is never read
unless the caller opts in (`--project-config`), and even then it is applied last and may
only *tighten*: lower a limit, or cut the network to none. Anything else it says (a host
program, a host path, a backend, a level, a profile, hosts, environment, packages) is
refused and reported, never applied, so no choice of the project can reach the host.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from .errors import PolicyError
from .policy import Limits, Policy, load_toml, parse_toml
from .project_files import read_project_file
from .units import format_size

TYPE_CHECKING = False  # not typing's: importing typing slows every CLI start-up
if TYPE_CHECKING:
    from typing import Any

USER_CONFIG = Path("detain") / "policy.toml"
PROJECT_FILE = "pyproject.toml"
PROJECT_CAP = 1 << 20  # a project's pyproject.toml is read only up to this size

# The settings a project may give, each only to make the run stricter.
_TIGHTEN_LIMITS = {"timeout": "wall_seconds", "cpu": "cpu_seconds", "memory": "memory_bytes",
                   "processes": "processes", "disk": "disk_bytes", "output": "output_bytes",
                   "open_files": "open_files"}
_REFUSED_BECAUSE = {
    "python": "names a host program",
    "mount": "names host paths", "copy_out": "names host paths",
    "requirements": "names a host path", "wheelhouse": "names a host path",
    "backend": "only the caller chooses the backend",
    "min_level": "only the caller chooses the level",
    "profile": "only the caller chooses the interpreter flags",
    "allow_host": "only the caller allows hosts",
    "env": "only the caller sets the environment",
    "image": "only the caller chooses an image",
    "with_packages": "only the caller chooses packages",
    "trace": "only the caller chooses tracing",
}


def user_config_path() -> Path | None:
    """The caller's own policy file (it need not exist): $DETAIN_CONFIG, empty for none,
    else $XDG_CONFIG_HOME/detain/policy.toml."""
    chosen = os.environ.get("DETAIN_CONFIG")
    if chosen is not None:
        return Path(chosen) if chosen else None
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / USER_CONFIG


def _check_owned(path: Path) -> None:
    """A config the caller trusts must be theirs: not another user's, not writable by others."""
    info = path.stat()
    if info.st_uid not in (os.geteuid(), 0) or info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise PolicyError(f"{path}: refusing a config file that is not yours or that others "
                          f"can write; chmod go-w {path} (or remove it)")


@dataclass
class ProjectConfig:
    """What a project's `[tool.detain]` asked for, and what detain did with each setting."""

    source: str
    applied: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)

    def describe(self) -> str:
        """One line for stderr: what applied and what was refused, and why."""
        parts = [f"project config {self.source}:"]
        parts.append("applied " + ", ".join(self.applied) if self.applied else "applied nothing")
        if self.refused:
            parts.append("; refused " + "; ".join(self.refused))
        return " ".join(parts)


def _limit_text(name: str, value: Any) -> str:
    return format_size(value) if name.endswith("_bytes") else f"{value:g}" \
        if isinstance(value, float) else str(value)


def tighten(policy: Policy, table: Mapping[str, Any], source: str) -> tuple[Policy,
                                                                          ProjectConfig]:
    """Apply the tightening part of an untrusted table; refuse and report all the rest."""
    report = ProjectConfig(source)
    limits: dict[str, Any] = {}
    for key, value in table.items():
        name = str(key).replace("-", "_")
        shown = repr(str(key))[1:-1][:60]
        if name in _TIGHTEN_LIMITS:
            attr = _TIGHTEN_LIMITS[name]
            try:
                asked = getattr(Policy().merge({name: value}, source).limits, attr)
            except PolicyError as exc:
                report.refused.append(f"{shown} ({exc})")
                continue
            current = limits.get(attr, getattr(policy.limits, attr))
            if asked > current:
                report.refused.append(f"{shown} = {_limit_text(attr, asked)} (would loosen the "
                                      f"caller's {_limit_text(attr, current)})")
                continue
            limits[attr] = asked
            report.applied.append(f"{shown} = {_limit_text(attr, asked)}")
        elif name == "network" and value == "none":
            policy = replace(policy, allow_hosts=())
            report.applied.append("network = none")
        elif name == "network":
            report.refused.append("network (a project may only set network = \"none\"; "
                                  "only the caller allows hosts)")
        else:
            reason = _REFUSED_BECAUSE.get(name, "not a setting a project may give")
            report.refused.append(f"{shown} ({reason})")
    if limits:
        policy = replace(policy, limits=replace(policy.limits, **limits))
    return policy, report


def read_project_table(project_dir: str | os.PathLike) -> tuple[dict[str, Any], str] | None:
    """`[tool.detain]` of the project's pyproject.toml, read as untrusted data, or None."""
    text = read_project_file(project_dir, PROJECT_FILE, PROJECT_CAP)
    if text is None:
        return None
    source = f"{Path(project_dir) / PROJECT_FILE} [tool.detain]"
    return parse_toml(text, source, ("tool", "detain")), source


def configure(policy_file: str | os.PathLike | None = None,
              overrides: Mapping[str, Any] | None = None, *,
              user_config: bool = True,
              project_dir: str | os.PathLike | None = None,
              ) -> tuple[Policy, ProjectConfig | None]:
    """Defaults ← user config ← policy_file ← overrides (flags), then a project may tighten.

    `project_dir` is the caller's opt-in to read that project's `[tool.detain]`; without
    it nothing of the project's is read. Returns the policy and, when a project table was
    read, what was applied and refused from it.
    """
    policy = Policy()
    if user_config:
        path = user_config_path()
        if path is not None and path.is_file():
            _check_owned(path)
            policy = policy.merge(_policy_table(load_toml(path)), str(path))
    if policy_file is not None:
        path = Path(policy_file)
        policy = policy.merge(_policy_table(load_toml(path)), str(path))
    if overrides:
        policy = policy.merge(overrides, "command line")
    project = None
    if project_dir is not None:
        found = read_project_table(project_dir)
        if found is not None:
            policy, project = tighten(policy, *found)
    return policy, project


def load_policy(policy_file: str | os.PathLike | None = None,
                overrides: Mapping[str, Any] | None = None, *,
                user_config: bool = True,
                project_dir: str | os.PathLike | None = None) -> Policy:
    """The policy `configure` builds, for callers that need no account of the project's table."""
    return configure(policy_file, overrides, user_config=user_config,
                     project_dir=project_dir)[0]


def _policy_table(data: dict[str, Any]) -> dict[str, Any]:
    """A policy file holds the settings at its top level or under [tool.detain]."""
    if "tool" in data:
        table = data.get("tool", {}).get("detain", {}) if isinstance(data["tool"], dict) else {}
        if not isinstance(table, dict):
            raise PolicyError("[tool.detain] must be a table")
        return table
    return data


assert set(_TIGHTEN_LIMITS.values()) <= set(Limits.__dataclass_fields__)

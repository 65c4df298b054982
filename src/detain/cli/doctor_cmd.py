"""`detain doctor`: the seeds' comparison table, made live for this host."""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "doctor", help="which backends can run here, at which level, and why not",
        description="List every isolation backend with its security level, whether it can "
        "run on this host, its version, and what to install when it cannot; then which one "
        "`auto` picks, why, and its expected cost per run.")
    parser.add_argument("--json", action="store_true", help="print the table as JSON")
    parser.set_defaults(handler=execute)


def collect() -> dict:
    from ..backends import BACKENDS, probe
    from ..host import cgroups

    rows, probes = [], {}
    for name, entry in BACKENDS.items():
        result = probes[name] = probe(name)
        rows.append({"backend": name, "level": entry.level,
                     "mechanism": _for_caller(name, entry.mechanism),
                     "available": result.available, "version": result.version,
                     "reason": _with_engine_hint(name, result.reason),
                     "details": dict(result.details)})
    host = {"system": platform.system(), "kernel": platform.release(),
            "machine": platform.machine(), "uid": os.geteuid(),
            "cgroups": {1: "v1 (writable)", 2: "v2 (writable)"}.get(cgroups.version(),
                                                                      "not writable"),
            "python": sys.version.split()[0]}
    choices = {label: _auto(probes.__getitem__, **needs) for label, needs in AUTO_JOBS}
    plain = choices.pop("")
    return {"host": host, "backends": rows, "auto": plain.get("backend"),
            "auto_choice": plain, "auto_for": choices, "server": _server()}


# The jobs whose `auto` choice doctor shows: a plain one, then one per need that changes it.
AUTO_JOBS = (("", {}), ("a network allow-list", {"allow_list": True}),
             ("requirements", {"requirements": True}), ("writable mounts",
                                                        {"mounts": True, "writable_mounts": True}))


def _auto(probe, **needs: bool) -> dict:
    """What `auto` picks at the default minimum level for a job with `needs`, and why."""
    from ..backends.auto import Needs, pick
    from ..errors import BackendUnavailable
    from ..policy import Policy

    try:
        return pick("auto", Policy().min_level, Needs(**needs), probe).describe()
    except BackendUnavailable as exc:
        return {"backend": None, "error": str(exc)}


def _for_caller(name: str, mechanism: str) -> str:
    """The mechanism as it holds for whoever asks: unprivileged, a process-based backend
    runs the job as the caller, who should not read "unprivileged uid" there."""
    if name not in ("process", "restricted"):
        return mechanism
    if os.geteuid() == 0:
        return f"{mechanism}; a fresh unprivileged uid per run"
    return (f"{mechanism}; runs the job as you (uid {os.geteuid()}): it can read and write "
            "what you can, ~/.bashrc and ~/.ssh included")


def _with_engine_hint(name: str, reason: str) -> str:
    """A Docker engine that does not answer: the command that starts one on this host."""
    if name != "docker" or not reason.startswith("no Docker engine answers"):
        return reason
    if os.path.isdir("/run/systemd/system"):
        return f"{reason}; with systemd: systemctl start docker"
    return (f"{reason}; this host has no systemd, so start it by hand as root: "
            "dockerd > /var/log/dockerd.log 2>&1 &")


def _server() -> str | None:
    """The socket of a `detain serve` answering for this user, or None."""
    import socket

    from ..paths import server_socket

    path = server_socket()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(path)
        except OSError:
            return None
    return path


def execute(args: argparse.Namespace) -> int:
    data = collect()
    if args.json:
        print(json.dumps(data, indent=2))
        return 0
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    host = data["host"]
    table = Table(title=f"detain doctor — {host['system']} {host['kernel']} "
                        f"({host['machine']}), uid {host['uid']}, cgroups {host['cgroups']}")
    for column in ("backend", "level", "can run here", "version", "mechanism / why not"):
        table.add_column(column, overflow="fold")
    for row in data["backends"]:
        status = "[green]yes[/]" if row["available"] else "[red]no[/]"
        facts = ", ".join(f"{k} {v}" for k, v in row["details"].items() if k != "path")
        text = (row["mechanism"] + (f" ({facts})" if facts else "")) if row["available"] \
            else row["reason"]
        table.add_row(row["backend"], str(row["level"]), status, escape(row["version"] or ""),
                      escape(text))
    # Piped or redirected, nothing is cut or wrapped: a reason is read whole, or by grep.
    console = Console() if sys.stdout.isatty() else Console(width=100_000, soft_wrap=True)
    console.print(table)
    _print_auto(console, data)
    if data["server"]:
        console.print(f"detain serve is listening on {data['server']}: `detain run` uses its "
                      "warm sandboxes (DETAIN_NO_SERVER=1 opts out)")
    else:
        console.print("no detain serve is running (start one to keep warm sandboxes for "
                      "`detain run`)")
    return 0


def _print_auto(console, data: dict) -> None:
    """Which backend `auto` picks here, why and at what cost, and where a job's needs
    change the pick."""
    from rich.markup import escape

    choice = data["auto_choice"]
    if choice.get("backend") is None:
        console.print(f"[red]auto (min level 2) picks nothing:[/] {escape(choice['error'])}")
        return
    console.print(f"auto (min level 2) picks: [bold]{choice['backend']}[/] (level "
                  f"{choice['level']}): {escape(choice['reason'])}; expected cost "
                  f"{escape(choice['expected_cost'])}")
    for need, other in data["auto_for"].items():
        if other.get("backend") != choice["backend"]:
            picked = other.get("backend") or f"nothing ({other.get('error')})"
            console.print(f"  for a job with {need}: {escape(picked)}")

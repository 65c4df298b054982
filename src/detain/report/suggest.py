"""`--suggest-policy`: the tightest policy (TOML) under which this run would still pass.

Limits are what the run used with headroom, never above what it was given: time three
times what was measured (one run on a quiet machine says little about a loaded CI
runner), at least 10 s; sizes doubled, memory at least 64 MiB. A comment in the TOML says
what was measured. Capabilities it did not use are turned off. The network allow-list keeps exactly
the host:port pairs the proxy let through; hosts the code tried without an allow-list
are listed as a comment, so the user decides whether it should have them.
"""

from __future__ import annotations

import math
from typing import Any

from ..units import format_size, parse_size
from .safe_text import visible

MIB = 1 << 20
TIME_HEADROOM = 3
TIME_FLOOR = 10  # seconds: an interpreter's start-up alone varies by whole seconds under load
MEMORY_FLOOR = 64 * MIB


def _size(used: int, given: str, floor: int) -> str:
    cap = parse_size(given, "limit") if given else used * 2
    wanted = max(floor, math.ceil(used * 2 / MIB) * MIB)
    return format_size(min(cap, wanted) if cap >= floor else cap)


def _seconds(used: float, given: float) -> int | float:
    return min(given, max(TIME_FLOOR, math.ceil(used * TIME_HEADROOM)))


def suggest_policy(report: dict[str, Any]) -> str:
    """TOML text for `--policy FILE`, with comments saying why each line is there."""
    events = report["events"]
    policy, limits = report["policy"], report["policy"]["limits"]
    timings = report["timings"]
    spawned = sum(1 for e in events if e["category"] == "process"
                  and e["event"] in ("subprocess.Popen", "os.fork", "os.forkpty", "os.spawn",
                                     "os.posix_spawn", "os.system", "pty.spawn"))
    writes = [e for e in events if e["category"] == "file-write"]
    named = (e["detail"].get("host") or e["detail"].get("address") or e["detail"].get("url")
             for e in events if e["category"] == "network")
    hosts = sorted({str(name) for name in named if name})  # a recorder's own note names none
    lines = [
        "# Suggested by detain from one observed run: the least it needed.",
        f"# backend {report['backend']['name']} (level {report['backend']['level']}); "
        f"re-run with --policy to check it still passes.",
        f"# measured: wall {timings['wall_seconds']:.2f} s, cpu {timings['cpu_seconds']:.2f} s, "
        f"peak memory {timings['peak_memory_bytes'] / MIB:.0f} MiB; timeout and cpu below are "
        f"{TIME_HEADROOM}x that (at least {TIME_FLOOR} s), memory 2x (at least "
        f"{MEMORY_FLOOR // MIB} MiB)",
        f"min_level = {max(policy.get('min_level', 2), 2)}",
        'profile = "strict"',
    ]
    used = sorted({f"{e['detail']['host']}:{e['detail']['port']}" for e in events
                   if e["event"] == "proxy.connect" and e["detail"].get("allowed")})
    if used:
        lines.append("network = { allow = [" + ", ".join(f'"{h}"' for h in used)
                     + "] }  # what the proxy let through")
    else:
        lines.append('network = "none"')
        if hosts:
            lines.append("# the code tried to reach: " + visible(", ".join(hosts)[:400]))
            lines.append("# add network = { allow = [\"host:port\"] } if it should")
    lines += [
        f"timeout = {_seconds(timings['wall_seconds'], limits['timeout'])}",
        f"cpu = {_seconds(timings['cpu_seconds'], limits['cpu'])}",
        f'memory = "{_size(timings["peak_memory_bytes"], limits["memory"], MEMORY_FLOOR)}"',
        f"processes = {min(limits['processes'], 1 + spawned * 2)}"
        + ("  # the job spawned processes" if spawned else "  # the job spawned none"),
        f'disk = "{limits["disk"] if writes else "1M"}"'
        + ("  # the job wrote files" if writes else "  # the job wrote no files"),
        f'output = "{limits["output"]}"',
    ]
    if policy.get("env"):
        lines.append("# environment variables given: " + ", ".join(policy["env"]))
    kept = []
    for mount in policy.get("mounts", []):
        host, sandbox, mode = mount.rsplit(":", 2)
        used = [e for e in events if str(e["detail"].get("path", "")).startswith(sandbox)]
        if not used:
            lines.append(f"# mount {host} -> {sandbox} was never touched: dropped")
            continue
        written = any(e["category"] == "file-write" for e in used)
        kept.append(f'"{host}:{sandbox}:{"rw" if written and mode == "rw" else "ro"}"')
    if kept:
        lines.append(f"mount = [{', '.join(kept)}]")
    return "\n".join(lines) + "\n"

"""Host-side bait: secrets to steal, canaries that must not appear, listeners, victims.

Everything a probe could reach if it got out is created here, on the host, with fresh
random names and tokens, and removed again however the probe ended. A `Session` lives for
one battery (its bait dir, and the caller-environment secrets detain itself carries); a
`Bait` lives for one probe run.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from ..host import rundir, tools

MEMORY_MARKER = "detain-selftest-secret:"
GRACE = 0.15  # lets a datagram or connection sent just before exit reach its queue
# Probes whose host-side evidence is shared state (per-uid key counts) take turns.
KEYRING = threading.Lock()


class Session:
    """Battery-wide bait: a world-readable bait dir, and secrets in detain's environment."""

    def __init__(self) -> None:
        self.env_token = secrets.token_hex(12)
        self.python_token = secrets.token_hex(12)
        # Not under /tmp: bait dirs are also mounted into sandboxes, where /tmp is detain's.
        base = rundir.base_dir() if os.geteuid() == 0 else tools.cache_dir()
        base.mkdir(parents=True, exist_ok=True)
        self.root = base / f"selftest-{os.getpid()}-{secrets.token_hex(4)}"
        self.root.mkdir(mode=0o755)
        os.chmod(self.root, 0o755)
        self.python_dir = self.root / "pythonpath"
        self.python_dir.mkdir(mode=0o755)
        hook = f"import sys\nsys.stdout.write({self.python_token!r} + '\\n')\n"
        for name in ("sitecustomize.py", "usercustomize.py", "startup.py"):
            (self.python_dir / name).write_text(hook)
        self._saved: dict[str, str | None] = {}

    def caller_environment(self) -> dict[str, str]:
        """What detain's own environment carries during the battery: things no job may see
        or be steered by (an API token, and PYTHON* variables pointing at a hostile hook).
        Not PYTHONINSPECT: CPython reads it again at exit, so detain itself would obey it."""
        return {"DETAIN_SELFTEST_SECRET": self.env_token,
                "PYTHONPATH": str(self.python_dir),
                "PYTHONSTARTUP": str(self.python_dir / "startup.py"),
                "PYTHONUSERBASE": str(self.python_dir)}

    def __enter__(self) -> Session:
        for key, value in self.caller_environment().items():
            self._saved[key] = os.environ.get(key)
            os.environ[key] = value
        return self

    def __exit__(self, *exc: object) -> None:
        for key, value in self._saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        shutil.rmtree(self.root, ignore_errors=True)


class Listener:
    """A host socket that must receive nothing; checked once the run is over."""

    def __init__(self, kind: str, directory: Path, tag: str) -> None:
        self.kind = kind
        families = {"tcp4": (socket.AF_INET, socket.SOCK_STREAM, ("127.0.0.1", 0)),
                    "udp4": (socket.AF_INET, socket.SOCK_DGRAM, ("127.0.0.1", 0)),
                    "tcp6": (socket.AF_INET6, socket.SOCK_STREAM, ("::1", 0)),
                    "udp6": (socket.AF_INET6, socket.SOCK_DGRAM, ("::1", 0)),
                    "unix": (socket.AF_UNIX, socket.SOCK_STREAM, str(directory / "sock")),
                    "abstract": (socket.AF_UNIX, socket.SOCK_STREAM,
                                 f"\0detain-selftest-{tag}")}
        family, kind_, address = families[kind]
        self.stream = kind_ == socket.SOCK_STREAM
        self.sock = socket.socket(family, kind_)
        self.sock.bind(address)
        if kind == "unix":
            os.chmod(address, 0o777)
        if self.stream:
            self.sock.listen(16)
        self.sock.setblocking(False)
        name = self.sock.getsockname()
        self.address = name[:2] if isinstance(name, tuple) else name

    @property
    def port(self) -> int:
        return self.address[1]

    def heard(self) -> str | None:
        time.sleep(GRACE)
        try:
            if self.stream:
                conn, _ = self.sock.accept()
                conn.close()
                return f"a connection reached the host's {self.kind} listener"
            data = self.sock.recv(65536)
            return f"{len(data)} bytes reached the host's {self.kind} listener"
        except (BlockingIOError, InterruptedError):
            return None

    def close(self) -> None:
        self.sock.close()


class Victim:
    """A host process of the caller's that must survive, holding a secret in memory and
    in its environment, and in its argv only when `in_argv` (so /proc/PID/cmdline does not
    hand out the secret that other probes look for)."""

    CODE = "import sys, time\nsecret = sys.stdin.readline()\ntime.sleep(600)\n"

    def __init__(self, secret: str, in_argv: bool = False) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-I", "-S", "-c", self.CODE, secret if in_argv else "victim"],
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            env={"DETAIN_SELFTEST_VICTIM": secret}, start_new_session=True)
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"{MEMORY_MARKER}{secret}\n".encode())
        self.proc.stdin.flush()
        self.pid = self.proc.pid

    def dead(self) -> str | None:
        time.sleep(0.05)
        if self.proc.poll() is not None:
            return f"a host process was killed (exit {self.proc.returncode})"
        return None

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()
        if self.proc.stdin is not None:
            self.proc.stdin.close()


class Bait:
    """Bait for one probe run; every piece is removed by `close`, escape or not."""

    def __init__(self, session: Session, mounts_supported: bool) -> None:
        self.session = session
        self.mounts_supported = mounts_supported
        self.tag = f"{secrets.randbelow(900000) + 100000}.{secrets.randbelow(9000) + 1000}"
        self.secret = secrets.token_hex(16)
        self.dir = session.root / self.tag
        self.dir.mkdir(mode=0o755)
        os.chmod(self.dir, 0o755)
        self._cleanups: list[Callable[[], None]] = []

    def file(self, name: str, text: str, mode: int = 0o644) -> Path:
        path = self.dir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        os.chmod(path, mode)
        return path

    def subdir(self, name: str, mode: int = 0o755) -> Path:
        path = self.dir / name
        path.mkdir(mode=mode, parents=True)
        os.chmod(path, mode)
        return path

    def home_dir(self, name: str) -> Path:
        """A 0700 dir in the caller's real home, as ~/.ssh or ~/.aws would be."""
        path = Path.home() / f".detain-selftest-{name}"
        path.mkdir(mode=0o700)
        self._cleanups.append(lambda: shutil.rmtree(path, ignore_errors=True))
        return path

    def canaries(self, paths: list[str]) -> Callable[[], str | None]:
        """Host paths the job must not create; the returned check also removes them."""
        def appeared() -> str | None:
            found = [p for p in paths if os.path.lexists(p)]
            for path in found:
                with contextlib.suppress(OSError):
                    shutil.rmtree(path) if os.path.isdir(path) and not os.path.islink(path) \
                        else os.unlink(path)
            return f"created on the host: {', '.join(found)}" if found else None
        self._cleanups.append(appeared)
        return appeared

    def listener(self, kind: str) -> Listener:
        listener = Listener(kind, self.dir, self.tag)
        self._cleanups.append(listener.close)
        return listener

    def victim(self, in_argv: bool = False) -> Victim:
        victim = Victim(self.secret, in_argv)
        self._cleanups.append(victim.close)
        return victim

    def exclusive(self, lock: threading.Lock) -> None:
        """Hold `lock` until this probe's bait is removed."""
        lock.acquire()
        self._cleanups.append(lock.release)

    def on_close(self, step: Callable[[], None]) -> None:
        self._cleanups.append(step)

    def close(self) -> None:
        for step in reversed(self._cleanups):
            with contextlib.suppress(Exception):
                step()

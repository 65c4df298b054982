"""Where detain keeps its state: one rule, shared by the run dirs and the `detain serve`
client (which must find the server's socket without importing anything heavy)."""

from __future__ import annotations

import os

SERVER_SOCKET = "serve.sock"


def state_dir() -> str:
    """`$DETAIN_STATE_DIR`, else /run/detain for root, else $TMPDIR/detain-<uid>.

    Root keeps state out of /tmp so the process backend can hide every world-writable dir
    from the job."""
    configured = os.environ.get("DETAIN_STATE_DIR")
    if configured:
        return configured
    if os.geteuid() == 0 and os.path.isdir("/run"):
        return "/run/detain"
    temp = next((os.environ[name] for name in ("TMPDIR", "TEMP", "TMP") if os.environ.get(name)),
                "/tmp")
    return os.path.join(temp, f"detain-{os.geteuid()}")


def server_socket() -> str:
    return os.path.join(state_dir(), SERVER_SOCKET)

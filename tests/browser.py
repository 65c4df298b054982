"""Headless Chromium for the report tests: render a page offline, read back its DOM, a
screenshot, and which URLs the page itself asked for (Debian package `chromium`)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if path := shutil.which(name):
            return path
    pytest.skip("no headless Chromium here (apt package chromium)")


def browse(browser: str, page: Path, work: Path, *extra: str) -> subprocess.CompletedProcess:
    """One headless run on `page`, its profile and net log under `work`."""
    flags = [browser, "--headless", "--no-sandbox", "--disable-gpu",
             "--disable-background-networking", "--disable-component-update",
             "--disable-sync", "--no-first-run", f"--user-data-dir={work / 'profile'}",
             f"--log-net-log={work / 'net.json'}", "--window-size=1280,2000", *extra]
    return subprocess.run([*flags, page.as_uri()], capture_output=True, timeout=120,
                          check=False)


def dom(page: Path, work: Path) -> str:
    """The DOM Chromium built from `page`, serialised (`--dump-dom`)."""
    done = browse(chromium(), page, work, "--dump-dom")
    assert done.returncode == 0, done.stderr.decode(errors="replace")[-2000:]
    return done.stdout.decode()


def page_requests(netlog: Path) -> set[str]:
    """URLs the *page* asked for (Chromium's own update/time pings say "not an origin")."""
    text = netlog.read_text(errors="replace")
    try:
        log = json.loads(text)
    except ValueError:  # Chromium may leave the log unterminated when it exits
        log = json.loads(text.rstrip().rstrip(",") + "]}")
    start = log["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"]
    urls = {str(e["params"].get("url")): e["params"].get("initiator")
            for e in log["events"] if e["type"] == start and isinstance(e.get("params"), dict)
            and "url" in e["params"]}
    return {url for url, initiator in urls.items() if initiator != "not an origin"
            and not url.startswith(("file:", "data:"))}

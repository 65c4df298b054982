"""The fetch phase, on the host: get the package's files, never run them.

A local wheel or sdist is copied; a directory is used as it is (it is shown read-only to
the install sandbox). A requirement `name==version` is fetched as a wheel by `pip download
--no-deps --only-binary=:all:`, which reads metadata from the wheel file and builds
nothing. When the release has no wheel, the sdist is downloaded directly from the
configured index's simple API (PEP 503 HTML) with urllib: pip is not used there, because
`pip download` of an sdist runs its build backend to learn its metadata — code from the
package, on the host. The file's sha256 from the index is checked.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import urllib.request
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urljoin, urlsplit

from ..errors import DetainError
from ..host.pip_download import pip_download
from .index import IndexConfig

ARTIFACT_CAP = 200 << 20
PAGE_CAP = 16 << 20
TIMEOUT = 60
SDIST_SUFFIXES = (".tar.gz", ".zip", ".tar.bz2", ".tgz")
_SPEC = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([A-Za-z0-9._!+-]+)$")


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def is_artifact(path: Path) -> bool:
    return path.is_file() and (path.name.endswith(".whl") or path.name.endswith(SDIST_SUFFIXES))


def fetch(spec: str, dest: Path, config: IndexConfig, python_version: str) -> Path:
    """The artifact file (or source directory) for `spec`, fetched into `dest`."""
    local = Path(spec).expanduser()
    if local.is_dir():
        return local.resolve()
    if is_artifact(local):
        target = dest / local.name
        shutil.copyfile(local, target)
        return target
    match = _SPEC.match(spec.strip())
    if not match:
        raise DetainError(f"{spec!r}: expected name==version, a wheel or sdist file, or a "
                          "project directory")
    name, version = match.groups()
    wheel = _pip_wheel(spec.strip(), dest, python_version)
    return wheel if wheel is not None else _sdist(name, version, dest, config)


def _pip_wheel(spec: str, dest: Path, python_version: str) -> Path | None:
    done = pip_download([spec], dest, python_version, deps=False)
    wheels = sorted(dest.glob("*.whl"))
    return wheels[0] if done.returncode == 0 and wheels else None


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.links: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        href = dict(attrs).get("href")
        if tag == "a" and href and len(self.links) < 100000:
            self.links.append(href)


def _read(url: str, cap: int) -> bytes:
    if urlsplit(url).scheme not in ("http", "https", "file"):
        raise DetainError(f"refusing to fetch {url!r}: not an http(s) or file URL")
    with urllib.request.urlopen(url, timeout=TIMEOUT) as response:  # noqa: S310 (checked)
        data = response.read(cap + 1)
    if len(data) > cap:
        raise DetainError(f"{url}: larger than {cap >> 20} MiB")
    return data


def _sdist(name: str, version: str, dest: Path, config: IndexConfig) -> Path:
    wanted = [f"{stem}-{version}{suffix}" for stem in {name, normalise(name),
                                                        normalise(name).replace("-", "_")}
              for suffix in SDIST_SUFFIXES]
    wanted_lower = {w.lower() for w in wanted}
    for index in config.index_urls:
        page_url = index.rstrip("/") + f"/{normalise(name)}/"
        try:
            parser = _Links()
            parser.feed(_read(page_url, PAGE_CAP).decode("utf-8", "replace"))
        except (OSError, DetainError, ValueError):
            continue
        for href in parser.links:
            url, _, fragment = urljoin(page_url, href).partition("#")
            filename = url.rsplit("/", 1)[-1]
            if filename.lower() not in wanted_lower or "/" in filename or not filename:
                continue
            data = _read(url, ARTIFACT_CAP)
            algorithm, _, digest = fragment.partition("=")
            if algorithm == "sha256" and hashlib.sha256(data).hexdigest() != digest.lower():
                raise DetainError(f"{url}: sha256 does not match the index's")
            target = dest / filename
            target.write_bytes(data)
            return target
    raise DetainError(f"{name}=={version}: no wheel for this Python and no sdist found on "
                      f"the configured index(es) {', '.join(config.index_urls)}")

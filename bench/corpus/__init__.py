"""The labelled corpus of bench/detection.py, kept in a cache directory.

* malicious/: sdists built here from bench/corpus/malicious.py (rebuilt every run: cheap,
  and always in step with the code);
* benign/: the sdists of popular PyPI projects at pinned versions, fetched once with
  detain's own sdist fetcher (package/fetch.py: straight from the index's simple API with
  its sha256 checked). `pip download --no-binary :all:` is not used: it runs each sdist's
  build backend on the host to read its metadata.
"""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

from .malicious import Sample, samples

CACHE = Path("~/.cache/detain/bench-corpus").expanduser()
BENIGN = [
    "six==1.17.0", "requests==2.34.2", "idna==3.20", "certifi==2026.10.18",
    "charset-normalizer==3.5.3", "urllib3==2.8.0", "attrs==26.1.0", "packaging==26.4",
    "click==8.5.1", "jinja2==3.1.6", "markupsafe==3.0.4", "pyyaml==6.0.4", "toml==0.10.2",
    "tomli==2.5.0", "colorama==0.4.6", "tqdm==4.70.1", "python-dateutil==4.0.0",
    "pytz==2026.6", "wheel==0.48.0", "pluggy==1.7.0", "iniconfig==2.3.1", "filelock==3.20.0",
    "platformdirs==4.3.8", "distlib==0.4.4", "typing-extensions==4.16.0", "zipp==4.1.2",
    "more-itertools==11.2.1", "decorator==5.3.1", "simplejson==4.3.0", "docutils==0.23.1",
    "setuptools==84.2.1", "pyparsing==3.3.3", "pygments==2.21.0", "psutil==7.2.2",
    "wrapt==2.5.2",
]
MTIME = 1_700_000_000  # fixed, so the sdists are byte-identical run to run


def build_malicious(dest: Path) -> list[tuple[Sample, Path]]:
    """Every malicious sample as an sdist (name-0.1.0.tar.gz with PKG-INFO) in `dest`."""
    dest.mkdir(parents=True, exist_ok=True)
    built = []
    for sample in samples():
        root = f"{sample.name}-0.1.0"
        files = {"PKG-INFO": f"Metadata-Version: 2.1\nName: {sample.name}\nVersion: 0.1.0\n",
                 **sample.files}
        target = dest / f"{root}.tar.gz"
        with tarfile.open(target, "w:gz") as archive:
            for name, content in sorted(files.items()):
                data = content.encode() if isinstance(content, str) else content
                info = tarfile.TarInfo(f"{root}/{name}")
                info.size, info.mtime, info.mode = len(data), MTIME, 0o644
                archive.addfile(info, io.BytesIO(data))
        built.append((sample, target))
    return built


def fetch_benign(dest: Path, *, offline: bool = False) -> tuple[list[tuple[str, Path]],
                                                                  list[str]]:
    """(spec, sdist) for every benign project, fetching the missing ones unless
    `offline`; and the specs that could not be had, with why."""
    from detain.errors import DetainError
    from detain.package.fetch import _sdist as fetch_sdist  # the index, no pip, no build
    from detain.package.index import read_config

    dest.mkdir(parents=True, exist_ok=True)
    config = read_config()
    have, missing = [], []
    for spec in BENIGN:
        name, version = spec.split("==")
        cached = sorted(p for p in dest.iterdir() if _is_sdist_of(p.name, name, version))
        if cached:
            have.append((spec, cached[0]))
            continue
        if offline:
            missing.append(f"{spec}: not in {dest} (run without --offline to fetch it)")
            continue
        try:
            have.append((spec, fetch_sdist(name, version, dest, config)))
        except (DetainError, OSError) as exc:
            missing.append(f"{spec}: {exc}")
    return have, missing


def _is_sdist_of(filename: str, name: str, version: str) -> bool:
    stem = filename.lower().replace("-", "_")
    return stem.startswith(f"{name.lower().replace('-', '_')}_{version}.") and (
        stem.endswith((".tar.gz", ".zip", ".tgz", ".tar.bz2")))

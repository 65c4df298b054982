"""--with / --requirements / --wheelhouse: packages installed inside the sandbox, then gone.

The wheel is built here, by hand, so the test needs no index and no build backend: a
wheel is a zip with the package, METADATA, WHEEL and a RECORD of hashes.
"""

import base64
import hashlib
import zipfile
from pathlib import Path

import pytest

from conftest import leftovers, require, run
from detain.errors import PolicyError

NAME, VERSION = "detain_tiny", "0.1"
IMPORTING = ("import detain_tiny, sys\nprint(detain_tiny.VALUE)\n"
             "print(detain_tiny.__file__)")


def build_wheel(directory: Path, name: str = NAME, version: str = VERSION) -> Path:
    info = f"{name}-{version}.dist-info"
    files = {
        f"{name}/__init__.py": "VALUE = 42\n",
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
        f"{info}/WHEEL": ("Wheel-Version: 1.0\nGenerator: detain-tests\n"
                          "Root-Is-Purelib: true\nTag: py3-none-any\n"),
    }
    record = []
    for path, text in files.items():
        digest = hashlib.sha256(text.encode()).digest()
        encoded = base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
        record.append(f"{path},sha256={encoded},{len(text.encode())}")
    files[f"{info}/RECORD"] = "\n".join([*record, f"{info}/RECORD,,"]) + "\n"
    wheel = directory / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for path, text in files.items():
            archive.writestr(path, text)
    return wheel


@pytest.fixture
def wheelhouse(tmp_path) -> Path:
    house = tmp_path / "wheelhouse"
    house.mkdir()
    build_wheel(house)
    return house


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["bwrap", "landlock", "venv"])
def test_a_wheel_from_the_wheelhouse_imports_and_the_venv_is_gone(backend, wheelhouse,
                                                                   state_dir):
    require(backend)
    result = run(backend, IMPORTING, with_packages=[NAME], wheelhouse=str(wheelhouse),
                 timeout=120)
    assert result.status == 0, (result.error, result.stderr)
    value, location = result.stdout.decode().split()
    assert value == "42"
    assert "/.detain-venv/" in location
    assert any("installed inside the sandbox" in note for note in result.notes)
    assert not Path(location).exists()
    assert not leftovers(state_dir)


@pytest.mark.slow
def test_a_requirements_file_works_too(wheelhouse, tmp_path):
    require("landlock")
    requirements = tmp_path / "requirements.txt"
    requirements.write_text(f"# pinned\n{NAME}=={VERSION}\n")
    result = run("landlock", IMPORTING, requirements=str(requirements),
                 wheelhouse=str(wheelhouse), timeout=120)
    assert result.status == 0, (result.error, result.stderr)
    assert result.stdout.startswith(b"42\n")


@pytest.mark.slow
def test_a_missing_package_is_a_clear_error(wheelhouse):
    require("landlock")
    result = run("landlock", "print('never')", with_packages=["not_in_the_wheelhouse"],
                 wheelhouse=str(wheelhouse), timeout=120)
    assert result.status == 2 and result.stdout == b""
    assert "No matching distribution found for not_in_the_wheelhouse" in result.error


def test_without_a_wheelhouse_there_is_no_index():
    require("landlock")
    with pytest.raises(PolicyError, match="--wheelhouse"):
        run("landlock", "pass", with_packages=[NAME])


@pytest.mark.parametrize("spec", ["--index-url=http://example.invalid", "-r /etc/passwd",
                                  f"{NAME} --extra-index-url x", f"{NAME}\nother"])
def test_pip_options_cannot_be_smuggled_in(spec, wheelhouse):
    with pytest.raises(PolicyError, match="not a requirement"):
        run("landlock", "pass", with_packages=[spec], wheelhouse=str(wheelhouse))

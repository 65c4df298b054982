"""pytest plugin: `pytest --detain` runs the session inside detain, as `detain pytest` does.

Without `--detain` the plugin does nothing: its module imports nothing pytest has not
already imported, and its hooks return at once.

With `--detain` on the command line of `pytest` (or `python -m pytest`), the plugin takes
the session over the moment pytest loads it, before pytest has finished reading its
arguments: it replaces the pytest process with `python -I -m detain pytest` and the
caller's arguments. Nothing pytest would do next happens on the host: no conftest.py, no
test module, no `--debug` file, no project `addopts` such as `-V` that would otherwise
change the course of the session. detain starts isolated (`-I`), so no project directory
is on its `sys.path`.

- Only the caller configures the run: the `--detain*` options are read from the caller's
  own command line and `PYTEST_ADDOPTS`, never from the project's `addopts` (the project's
  pytest.ini / pyproject.toml / tox.ini / setup.cfg is hostile input). The policy is then
  built as `detain pytest` builds it: defaults, your own config, `--detain-policy`, flags;
  a project's `[tool.detain]` only with `--detain-option=--project-config`.
- The sandbox's pytest gets the same arguments minus the `--detain*` options, plus
  `-p no:detain`: should detain be installed in there too, its plugin cannot load, so the
  session cannot recurse.
- Before it takes over, the plugin checks whether pytest has already imported a module
  from the project (pytest applies the ini's `pythonpath` and imports `-p` plugins named
  in `addopts` before it loads this plugin). If it has, project code ran on this host:
  the plugin says which modules and exits 2 rather than report a run that looks clean.
- Called as `pytest.main([...])` from another program, the plugin cannot replace the
  process: its hooks then keep conftest.py out (`noconftest`, set in a `tryfirst`
  `pytest_load_initial_conftests`) and hand the session to detain in-process.

What no plugin can prevent: a project's configuration that keeps the plugin from loading
at all (`addopts = -p no:detain`, `--disable-plugin-autoload`) makes pytest import its
conftest.py on the host, which may even mimic detain's output. For a project you have not
read, `detain pytest` starts no pytest on the host.
"""

from __future__ import annotations

import os
import sys

import pytest

ENTRY_POINT = "detain"  # the pytest11 entry point's name, blocked inside the sandbox
ASKS_PYTEST_ITSELF = ("-h", "--help", "-V", "--version")  # the caller's own, answered here
OPTIONS = (  # this plugin's options with a value: the `detain pytest` option each becomes
    ("--detain-backend", "--backend", "NAME", "a backend from `detain doctor` (default: auto)"),
    ("--detain-policy", "--policy", "FILE", "a TOML policy file (over your own "
     "~/.config/detain/policy.toml)"),
    ("--detain-timeout", "--timeout", "SECONDS", "wall-clock limit of the sandboxed "
     "session (default 30); exceeded: exit 124"),
    ("--detain-min-level", "--min-level", "N", "refuse backends below level N (default 2)"),
    ("--detain-option", "", "ARG", "pass ARG to `detain pytest` as it is, e.g. "
     "--detain-option=--summary or --detain-option=--memory=1G (repeatable; the = form)"),
)
FLAGS = {name: flag for name, flag, _, _ in OPTIONS}
ARGV = pytest.StashKey[list[str]]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("detain", "run this session inside a detain sandbox "
                            "(the same run as `detain pytest`)")
    group.addoption("--detain", action="store_true", help="run the tests inside a sandbox; "
                    "conftest.py and the tests never run on this host")
    for name, flag, metavar, text in OPTIONS:
        group.addoption(name, metavar=metavar, help=text,
                        action="store" if flag else "append")


def split_args(args: list[str]) -> tuple[bool, list[str], list[str]]:
    """(whether --detain was given, the `detain pytest` options, pytest's other arguments).

    Exact rather than argparse's guesswork: a `--detain*` option is taken out with its
    value, everything else is kept in order, and nothing after `--` is an option.
    """
    active, options, others = False, [], []
    remaining = iter(args)
    for arg in remaining:
        name, equals, value = arg.partition("=")
        if arg == "--":
            others += [arg, *remaining]
        elif arg == "--detain":
            active = True
        elif name in FLAGS:
            value = value if equals else next(remaining, "")
            options += [FLAGS[name], value] if FLAGS[name] else [value]
        else:
            others.append(arg)
    return active, options, others


def _caller_args(config: pytest.Config) -> list[str]:
    """What the caller gave pytest: PYTEST_ADDOPTS, then the command line (no ini addopts)."""
    import shlex

    return [*shlex.split(os.environ.get("PYTEST_ADDOPTS", "")),
            *config.invocation_params.args]


@pytest.hookimpl(tryfirst=True)
def pytest_load_initial_conftests(early_config: pytest.Config) -> None:
    """With --detain, pytest imports no conftest.py on the host (the takeover comes next)."""
    active, options, rest = split_args(_caller_args(early_config))
    if active:
        early_config.known_args_namespace.noconftest = True
        project = str(early_config.invocation_params.dir)
        early_config.stash[ARGV] = ["pytest", *options, project, "--",
                                    "-p", f"no:{ENTRY_POINT}", *rest]


def _undo_project_paths(config: pytest.Config) -> None:
    """Take the ini's `pythonpath` off sys.path, and say what pytest already did with it."""
    paths = [str(path) for path in config.getini("pythonpath")]
    for path in paths:
        if path in sys.path:
            sys.path.remove(path)
    plugins = [name for name in _plugin_args(config.getini("addopts"))
               if not name.startswith("no:")]
    if paths or plugins:
        from .report.safe_text import say

        what = " and ".join(part for part, given in (("sets pythonpath", paths),
                                                     ("loads plugins (-p)", plugins)) if given)
        say(f"warning: {config.inipath or 'the pytest configuration'} {what}: pytest applied "
            "it on this host before detain's plugin loaded, so modules from the project may "
            "have been imported here; for a project you have not read, run `detain pytest`")


def _plugin_args(args: list[str]) -> list[str]:
    """The values of `-p NAME` / `-pNAME` in `args`."""
    remaining = iter(args)
    return [(next(remaining, "") if arg == "-p" else arg[2:])
            for arg in remaining if arg.startswith("-p")]


@pytest.hookimpl(tryfirst=True)
def pytest_cmdline_main(config: pytest.Config) -> int | None:
    """The session is detain's: its exit status is pytest's inside the sandbox (or detain's
    own 2, 124, 137 ...). `--help` still shows pytest's help, conftests left out."""
    argv = config.stash.get(ARGV, None)
    if argv is None or config.option.help or config.option.version:
        return None
    _undo_project_paths(config)
    from .cli.main import main

    return main(argv)


def _started_as_pytest() -> bool:
    """`pytest …` or `python -m pytest …`: sys.argv is then the caller's command line."""
    program = os.path.basename(sys.argv[0]) if sys.argv else ""
    return program in ("pytest", "py.test") or sys.argv[0].endswith(
        os.path.join("pytest", "__main__.py"))


def _project_modules(project: str) -> list[str]:
    """Modules pytest has imported from the project dir (not from an environment in it)."""
    root = os.path.realpath(project) + os.sep
    environments = {os.path.realpath(p) + os.sep for p in (sys.prefix, sys.base_prefix)}
    ours = os.path.dirname(os.path.realpath(__file__)) + os.sep
    found = []
    for name, module in list(sys.modules.items()):
        path = getattr(module, "__file__", None)
        if not isinstance(path, str):
            continue
        real = os.path.realpath(path)
        if real.startswith(root) and not real.startswith(ours) \
                and not any(real.startswith(env) for env in environments):
            found.append(name)
    return sorted(found)


def _take_over() -> None:
    """`pytest --detain …` becomes `detain pytest …` now, before pytest goes on."""
    import shlex

    if not _started_as_pytest():
        return
    active, options, rest = split_args([*shlex.split(os.environ.get("PYTEST_ADDOPTS", "")),
                                        *sys.argv[1:]])
    if not active or any(arg in ASKS_PYTEST_ITSELF for arg in rest):
        return
    project = os.getcwd()
    loaded = _project_modules(project)
    if loaded:
        sys.stderr.write(
            f"detain: error: pytest imported {', '.join(loaded[:8])} from {project} on this "
            "host before detain's plugin loaded (the project's pytest configuration: "
            "pythonpath, or -p in addopts), so the project's code already ran here; refusing "
            "to go on. For a project you have not read, run `detain pytest`\n")
        sys.stderr.flush()
        os._exit(2)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, [sys.executable, "-I", "-m", "detain", "pytest", *options,
                              project, "--", "-p", f"no:{ENTRY_POINT}", *rest])


_take_over()

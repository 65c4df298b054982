"""Python-specific probes, after the seeds: what steers an interpreter before the job runs,
and the launcher's event channel, which the job shares a process with."""

from __future__ import annotations

import sys

from .bait import Bait
from .model import Attack, Outcome, leaked, probe, program

HOOK = "import sys\nsys.stdout.write({token!r} + '\\n')\n"
FORGED_UID = 4242
CHANNEL_FD = """
def channel_fd():
    with open('/proc/self/cmdline', 'rb') as handle:
        argv = handle.read().split(b'\\0')
    for number, arg in enumerate(argv):
        if arg.endswith(b'launcher.py'):
            return int(argv[number + 1])
    raise SystemExit('no channel fd found')
fd = channel_fd()
"""


@probe("python", "caller-environment", "read detain's own environment (an API token) from "
       "os.environ and /proc")
def caller_environment(bait: Bait) -> Attack:
    body = """
    print(dict(os.environ))
    for pid in ('self', str(os.getppid()), '1'):
        try:
            with open('/proc/%s/environ' % pid, 'rb') as handle:
                sys.stdout.buffer.write(handle.read(1 << 16) + b'\\n')
        except OSError as exc:
            print(pid, type(exc).__name__)
    """
    token = bait.session.env_token
    return Attack(program(bait.tag, body),
                  lambda out: leaked(token, out, "detain's environment"))


@probe("python", "inherited-python-vars", "PYTHONPATH / PYTHONSTARTUP / PYTHONUSERBASE in "
       "detain's environment, pointing at a hostile sitecustomize")
def inherited_python_vars(bait: Bait) -> Attack:
    token = bait.session.python_token
    return Attack(program(bait.tag, "pass\n"),
                  lambda out: leaked(token, out, "a hook from detain's PYTHON* variables"))


@probe("python", "policy-python-vars", "PYTHON* variables set through the policy's env "
       "(PYTHONPATH, PYTHONBREAKPOINT, PYTHONSTARTUP, PYTHONINSPECT)")
def policy_python_vars(bait: Bait) -> Attack:
    hooks = bait.subdir("hooks")
    for name in ("sitecustomize.py", "usercustomize.py", "startup.py"):
        bait.file(f"hooks/{name}", HOOK.format(token=bait.secret))
    bait.file("hooks/detain_hook.py", HOOK.format(token=bait.secret) + "fire = print\n")
    env = {"PYTHONPATH": str(hooks), "PYTHONSTARTUP": str(hooks / "startup.py"),
           "PYTHONINSPECT": "1", "PYTHONBREAKPOINT": "detain_hook.fire"}
    return Attack(program(bait.tag, "breakpoint()\n"),
                  lambda out: leaked(bait.secret, out, "a PYTHON* hook from the policy"),
                  settings={"env": env}, mounts=(f"{hooks}:{hooks}",))


@probe("python", "user-site", "a .pth file and usercustomize in the user site of a HOME "
       "the policy points at")
def user_site(bait: Bait) -> Attack:
    home = bait.subdir("home")
    site = f"home/.local/lib/python{sys.version_info[0]}.{sys.version_info[1]}/site-packages"
    bait.file(f"{site}/detain-selftest.pth", HOOK.format(token=bait.secret).replace("\n", "; ")
              .rstrip("; ") + "\n")
    bait.file(f"{site}/usercustomize.py", HOOK.format(token=bait.secret))
    return Attack(program(bait.tag, "pass\n"),
                  lambda out: leaked(bait.secret, out, "a hook from the user site"),
                  settings={"env": {"HOME": str(home), "PYTHONUSERBASE": str(home / ".local")}},
                  mounts=(f"{home}:{home}",))


@probe("python", "persistence", "plant .pth / usercustomize / sitecustomize in HOME and "
       "cwd for the next run to execute")
def persistence(bait: Bait) -> Attack:
    body = """
    import sysconfig
    hook = 'import sys\\nsys.stdout.write(%r)\\n' % TOKEN
    site = sysconfig.get_path('purelib', os.name + '_user')
    for directory in (site, os.getcwd()):
        try:
            os.makedirs(directory, exist_ok=True)
            for name in ('usercustomize.py', 'sitecustomize.py'):
                with open(os.path.join(directory, name), 'w') as handle:
                    handle.write(hook)
            with open(os.path.join(directory, 'detain-selftest.pth'), 'w') as handle:
                handle.write(hook.replace('\\n', '; ') + '\\n')
        except OSError as exc:
            print(directory, type(exc).__name__)
    """
    follow_up = Attack(program(bait.tag, "import csv\n"),
                       lambda out: leaked(bait.secret, out, "a hook planted by an earlier run"))
    return Attack(program(bait.tag, body, TOKEN=bait.secret), lambda _out: None,
                  follow_up=follow_up)


@probe("python", "script-dir-shadowing", "a stdlib-named module (csv.py) next to the "
       "script, imported by the script")
def script_dir_shadowing(bait: Bait) -> Attack:
    project = bait.subdir("project")
    bait.file("project/csv.py", HOOK.format(token=bait.secret))
    script = project / "job.py"
    script.write_text(program(bait.tag, "import csv\n"))
    return Attack("", lambda out: leaked(bait.secret, out, "a module shadowing the stdlib"),
                  script=str(script))


def _channel_check(out: Outcome) -> str | None:
    """The Result must exist, be no detain error, and take assurance from the real hello."""
    if out.result is None:
        return f"no Result was produced: {out.error}"
    if out.result.error is not None:
        return f"forged records turned the run into a detain error: {out.result.error}"
    if out.result.assurance.get("uid") == FORGED_UID:
        return "the assurance came from a forged hello record"
    if out.wall > 20:
        return f"the channel held detain for {out.wall:.0f} s"
    return None


@probe("python", "channel-forgery", "write forged hello / deps / exit records to the "
       "launcher's event channel, then close it")
def channel_forgery(bait: Bait) -> Attack:
    body = CHANNEL_FD + """
forged = ['{"type": "hello", "assurance": {"uid": %d, "status": {"Seccomp": "0"}}}' % UID,
          '{"type": "deps", "ok": false, "error": "forged"}',
          '{"type": "exit", "memory_error": true}', '{not json', '[1, 2]']
os.write(fd, ('\\n'.join(forged) + '\\n').encode())
os.close(fd)
print('forged')
"""
    return Attack(program(bait.tag, body, UID=FORGED_UID), _channel_check)


@probe("python", "channel-flood", "flood the event channel (a 64 MiB line, 100,000 "
       "records), then put stdout on its fd")
def channel_flood(bait: Bait) -> Attack:
    body = CHANNEL_FD + """
hello = ('{"type": "hello", "assurance": {"uid": %d}}\\n' % UID).encode()
try:
    os.write(fd, b'x' * (64 << 20))
    os.write(fd, b'\\n' + hello * 100000)
except OSError as exc:
    print('flood', type(exc).__name__)
os.dup2(1, fd)
"""
    return Attack(program(bait.tag, body, UID=FORGED_UID), _channel_check,
                  settings={"timeout": 20})

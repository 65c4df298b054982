"""What malware in a Python package names or calls, as tables scan/malware.py matches.

Each row says, in triage words, what the package would do. Paths are matched on the text
an expression folds to (scan/fold.py), lower-cased, with backslashes as slashes; calls on
their dotted name after import aliases are resolved (`from PIL import ImageGrab as G;
G.grab()` is `PIL.ImageGrab.grab`). Written for this project from public reporting on
PyPI malware (credential stealers, droppers, clipboard hijackers); no rule set was copied.
"""

from __future__ import annotations

import re

# (pattern on a folded path, what it is, severity). High: only a thief or a backup tool
# reads it; medium: ordinary tools read it for their own login (netrc, pypirc, kube).
CREDENTIALS = [
    (r"\.aws/credentials", "the AWS credentials file", "high"),
    (r"(^|/)id_(rsa|dsa|ecdsa|ed25519)\b|\.ssh/(id_|identity)", "an SSH private key", "high"),
    (r"\.ssh(/|$)", "the SSH directory", "medium"),
    (r"\.config/gcloud|application_default_credentials", "Google Cloud credentials", "high"),
    (r"\.azure/(accesstokens|msal_token)", "Azure CLI tokens", "high"),
    (r"\.git-credentials", "git's stored passwords", "high"),
    (r"/etc/shadow", "the system password hashes", "high"),
    (r"/proc/(self|\d+|\x00)/environ", "a process's whole environment", "high"),
    (r"google/chrome|google-chrome|chromium|bravesoftware|microsoft/edge/user data"
     r"|\.mozilla/firefox|mozilla/firefox/profiles|opera software|yandexbrowser|vivaldi",
     "a web browser's profile", "high"),
    (r"(^|/)(login data|web data|local state|logins\.json|key4\.db|cookies\.sqlite)$",
     "a browser's saved passwords or cookies", "high"),
    (r"library/keychains|\.keychain(-db)?$|\.local/share/keyrings|\.password-store",
     "a password keychain", "high"),
    (r"wallet\.dat|electrum|exodus/|\.ethereum/keystore|atomic/local storage|metamask"
     r"|nkbihfbeogaeaoehlefnkodbefgpgknn|coinomi|\.bitcoin(/|$)|\.monero",
     "a cryptocurrency wallet", "high"),
    (r"discord(canary|ptb)?/local storage|telegram desktop/tdata",
     "a chat app's login token store", "high"),
    (r"(^|/)\.netrc$", "the .netrc password file", "medium"),
    (r"(^|/)\.pypirc$", "the PyPI upload credentials (.pypirc)", "medium"),
    (r"(^|/)\.npmrc$", "the npm token file (.npmrc)", "medium"),
    (r"\.docker/config\.json", "Docker registry logins", "medium"),
    (r"\.kube/config", "Kubernetes credentials", "medium"),
    (r"(^|/)\.(bash|zsh)_history$", "the shell history", "medium"),
]

# Written to, these make code run again later: at login, on a timer, at every interpreter.
PERSISTENCE = [
    (r"(^|/)\.(bashrc|bash_profile|bash_login|zshrc|zprofile|zshenv|profile|cshrc)$",
     "a shell start-up file"),
    (r"/etc/(profile\.d|rc\.local|bash\.bashrc|ld\.so\.preload)", "a system start-up file"),
    (r"(^|/)crontab\b|/etc/cron|/var/spool/cron", "the cron schedule"),
    (r"\.config/systemd/user|/etc/systemd/system|/lib/systemd/system", "a systemd unit"),
    (r"\.config/autostart|/etc/xdg/autostart", "the desktop autostart folder"),
    (r"launchagents|launchdaemons", "a macOS launch agent"),
    (r"currentversion/run(once)?\b", "a Windows Run key"),
    (r"start menu/programs/startup", "the Windows Startup folder"),
    (r"(^|/)(sitecustomize|usercustomize)\.py$", "Python's start-up hook (sitecustomize)"),
    (r"\.ssh/authorized_keys", "SSH authorized_keys (a login for someone else)"),
]
PTH = re.compile(r"\.pth$")
IMPORT_LINE = re.compile(r"(?:^|[;\n])\s*import\s+\w")  # what makes a .pth line run

# Where stolen data is usually sent or payloads are hosted (host or URL part). A third
# column, when there is one, is what makes the destination the author's own (a webhook id,
# a bot token written in); without it the user supplies it (a Telegram progress bar).
ENDPOINTS = [
    (r"discord(app)?\.com/api/webhooks", "a Discord webhook", r"webhooks/\d+/"),
    (r"api\.telegram\.org/bot", "a Telegram bot", r"telegram\.org/bot\d+:"),
    (r"hooks\.slack\.com/", "a Slack webhook", r"services/t\w+/"),
    (r"pastebin\.com|paste\.ee|hastebin|rentry\.co|ghostbin", "a paste site"),
    (r"transfer\.sh|file\.io\b|gofile\.io|anonfiles|temp\.sh|0x0\.st", "a file-drop site"),
    (r"webhook\.site|requestbin|pipedream\.net|beeceptor", "a request-capture service"),
    (r"ngrok(-free)?\.(io|app|dev)|trycloudflare\.com|serveo\.net|localtunnel|loca\.lt",
     "a tunnel to someone's own machine"),
    (r"interact\.sh|\boast\.(fun|live|me|online|pro|site)|burpcollaborator|canarytokens",
     "an out-of-band callback service"),
    (r"duckdns\.org|no-ip\.|ddns\.net|dynu\.", "a dynamic-DNS host"),
    (r"\.onion\b", "a Tor hidden service"),
    (r"cdn\.discordapp\.com/attachments", "a Discord attachment (payload hosting)"),
    (r"api\.ipify\.org|ipinfo\.io|ifconfig\.me|icanhazip|checkip\.", "a what-is-my-IP service"),
]
URL = re.compile(r"\b(?:https?|ftp|wss?|tcp)://\[?([A-Za-z0-9._:\-]+?)\]?(?::\d+)?(?:[/?#]|$)")
IPV4 = re.compile(r"^(?:(?:25[0-5]|2[0-4]\d|1?\d?\d)\.){3}(?:25[0-5]|2[0-4]\d|1?\d?\d)$")

# Programs that move data over the network, or hide or persist, when Python starts them.
TOOLS = re.compile(r"(?:^|[\s;&|`(/\"'])(curl|wget|nc|ncat|netcat|socat|nslookup|dig|"
                   r"scp|tftp|telnet|powershell|pwsh|certutil|bitsadmin|mshta|crontab|"
                   r"schtasks|launchctl|xclip|xsel|pbpaste|screencapture|scrot)(?=[\s.\"']|$)")
SHELL_TRICKS = re.compile(r"/dev/(tcp|udp)/|bash\s+-i\b|\|\s*(ba)?sh\b|base64\s+(-d|--decode)")

# Resolved call name -> (rule, severity, category, what it does)
SPY_CALLS = [
    (r"^pyperclip\.(paste|waitfor\w*)$|^win32clipboard\.getclipboarddata$|clipboard_get$",
     "clipboard", "high", "reads the clipboard (clipboard hijackers swap wallet addresses)"),
    (r"^pyperclip\.copy$|^win32clipboard\.(setclipboard\w*|openclipboard)$",
     "clipboard", "high", "writes the clipboard"),
    (r"^pil\.imagegrab\.grab\w*$|^pyautogui\.screenshot$|^pyscreenshot\.grab$|^mss\.mss$",
     "screenshot", "high", "takes screenshots"),
    (r"^pynput\.keyboard\.(listener|events)$|^keyboard\.(hook|on_press|on_release|record|"
     r"read_key|start_recording)$|getasynckeystate$|setwindowshookex\w*$|^pyxhook\.",
     "keylogger", "high", "records keystrokes (keylogger)"),
]
SPY_MODULES = {"pyperclip": "clipboard", "win32clipboard": "clipboard",
               "pil.imagegrab": "screenshot", "pyautogui": "screenshot",
               "pyscreenshot": "screenshot", "mss": "screenshot",
               "pynput.keyboard": "keylogger", "pynput": "keylogger", "pyxhook": "keylogger"}

# Where a user's own files are: code that names `.bashrc` and works here means ~/.bashrc.
HOME_CALLS = {"os.path.expanduser", "pathlib.Path.home", "Path.home", "os.path.expandvars"}
HOME_VARIABLES = {"HOME", "USERPROFILE", "APPDATA", "LOCALAPPDATA", "XDG_CONFIG_HOME"}

# What a package asks the system about itself before phoning home.
IDENTITY_CALLS = {"getpass.getuser", "os.getlogin", "socket.gethostname", "platform.node",
                  "platform.uname", "os.uname", "uuid.getnode", "socket.getfqdn"}

# Resolved call names that move data over the network.
SINK_ROOTS = ("requests.", "httpx.", "aiohttp.", "urllib3.", "http.client.", "smtplib.",
              "ftplib.", "telnetlib.", "websocket.", "websockets.", "dns.resolver.",
              "pycurl.", "paramiko.")
SINK_NAMES = {"urlopen", "urlretrieve", "Request", "create_connection", "sendall", "sendto",
              "gethostbyname", "gethostbyname_ex", "getaddrinfo", "post", "put", "patch",
              "connect", "connect_ex"}
DOWNLOADS = {"urlopen", "urlretrieve", "get", "request", "stream", "download"}

DECODERS = {"b64decode", "b32decode", "b16decode", "b85decode", "a85decode", "decodebytes",
            "standard_b64decode", "urlsafe_b64decode", "unhexlify", "a2b_hex",
            "a2b_base64", "fromhex", "decompress", "translate", "chr", "reversed"}
EXECUTORS = {"exec", "eval", "compile", "__import__", "execfile", "FunctionType",
             "run_path", "run_module"}

SENSITIVE_MODULES = {"os", "posix", "nt", "subprocess", "builtins", "__builtin__",
                     "__builtins__", "socket", "sys", "importlib", "ctypes", "shutil", "pty",
                     "urllib", "urllib.request", "requests", "base64", "marshal", "codecs",
                     "zlib", "http.client", "webbrowser"}
DANGEROUS_NAMES = re.compile(
    r"^(system|popen\d?|spawn\w*|exec\w*|Popen|check_output|check_call|getoutput|"
    r"getstatusoutput|eval|compile|__import__|urlopen|urlretrieve|remove|unlink|rmtree|"
    r"fork|kill|b64decode|loads|socket|connect|import_module|environ|getenv|"
    r"open|__builtins__|globals|setattr|getattr|startfile)$")

PYARMOR_NAMES = {"__pyarmor__", "__armor_enter__", "__armor_exit__", "__armor_wrap__",
                 "pyarmor_runtime", "__pyarmor_enter__"}
PYARMOR_MODULES = re.compile(r"^(pytransform|pyarmor_runtime\w*)(\.|$)")

OBFUSCATED_NAME = re.compile(r"^_*(?:[Il1]{6,}|[O0]{6,}|0x[0-9a-fA-F]{4,}|_0x[0-9a-fA-F]{3,})$")

# setup.py cmdclass keys pip reaches while it builds or installs a package.
INSTALL_STEPS = {"install", "develop", "egg_info", "build_py", "sdist", "bdist_wheel",
                 "build", "easy_install", "install_lib", "install_scripts", "install_data",
                 "bdist_egg", "dist_info", "editable_wheel", "build_ext", "build_clib"}
# Roots of calls inside a command's run() that mean more than building the package.
INSTALL_WORK = ("os.", "subprocess.", "socket.", "urllib", "requests.", "http.", "shutil.",
                "base64.", "zlib.", "marshal.", "ctypes.", "pty.", "webbrowser.", "winreg.")
INSTALL_WORK_NAMES = {"exec", "eval", "__import__", "urlopen", "urlretrieve", "system",
                      "Popen"}


def first_match(table: list[tuple], text: str) -> tuple | None:
    """The first row of `table` whose pattern (column 0) is found in `text`."""
    return next((row for row in table if re.search(row[0], text)), None)

# Programs run from Python: (rule, category, severity, what running it means).
TOOL_KINDS = {
    **dict.fromkeys(("curl", "wget", "nc", "ncat", "netcat", "socat", "nslookup", "dig",
                     "scp", "tftp", "telnet"),
                    ("process-network", "network", "high", "runs {tool}: network traffic "
                     "outside Python, out of reach of Python-level checks")),
    **dict.fromkeys(("powershell", "pwsh", "certutil", "bitsadmin", "mshta"),
                    ("process-lolbin", "process", "high", "runs {tool}, a Windows tool "
                     "malware uses to download and run payloads")),
    **dict.fromkeys(("crontab", "schtasks", "launchctl"),
                    ("persistence-command", "file-write", "high", "runs {tool}: schedules "
                     "code to run again later (persistence)")),
    **dict.fromkeys(("xclip", "xsel", "pbpaste"),
                    ("clipboard", "other", "high", "runs {tool}: reads or writes the clipboard")),
    **dict.fromkeys(("screencapture", "scrot"),
                    ("screenshot", "other", "high", "runs {tool}: takes screenshots")),
}
PROCESS_CALLS = re.compile(
    r"^(subprocess\.(run|call|check_call|check_output|Popen|getoutput|getstatusoutput)|"
    r"os\.(system|popen\d?|exec\w+|spawn\w+|posix_spawnp?|startfile)|pty\.spawn|"
    r"asyncio\.create_subprocess_\w+|commands\.getoutput)$")
SERIALISERS = {"dumps", "dump", "urlencode", "b64encode", "b32encode", "hexlify", "str",
               "repr", "encode", "join", "format", "write", "send", "sendall", "sendto",
               "safe_dump", "compress"}
CODECS = {"rot13", "rot_13", "base64", "base_64", "base64_codec", "hex", "hex_codec", "zlib",
          "zlib_codec", "bz2", "bz2_codec", "uu", "uu_codec"}

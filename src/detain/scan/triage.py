"""Bandit's findings reworded for malware triage.

Bandit is written for finding injection bugs in one's own code ("Consider possible
security implications associated with the subprocess module"). Someone vetting a
dependency asks another question: what would this package do to me? Each test id maps to
that answer and to the severity it has for that question: weak hashes, asserts or SQL
strings are bugs, not malice (info); a shell command built at run time is an injection
risk but not by itself a payload (medium: detain's own rules say high when the command
downloads, persists or pipes into a shell).
Ids not listed keep Bandit's text and severity.
"""

from __future__ import annotations

# test id -> (triage sentence, severity for triage; None keeps Bandit's)
TRIAGE = {
    "B101": ("uses assert (a bug risk, not a malware signal)", "info"),
    "B102": ("runs a string as code with exec()", None),
    "B103": ("changes file permissions to world-writable or executable (chmod)", "medium"),
    "B104": ("listens on every network interface", "medium"),
    "B105": ("holds a hard-coded password-like string", "info"),
    "B106": ("passes a hard-coded password-like string", "info"),
    "B107": ("has a hard-coded password-like default", "info"),
    "B108": ("writes to a fixed path under /tmp (a drop location)", "low"),
    "B110": ("silences every error (try/except/pass): payloads use it to fail quietly", "low"),
    "B112": ("skips every error (try/except/continue)", "low"),
    "B113": ("makes an HTTP request with requests", "low"),
    "B202": ("extracts a tar archive without checking member paths", "medium"),
    "B301": ("loads pickle data: unpickling can run any code", None),
    "B302": ("loads marshalled code objects (a way to ship hidden bytecode)", "medium"),
    "B303": ("uses a weak hash (MD5/SHA1)", "info"),
    "B304": ("uses a weak cipher", "info"),
    "B305": ("uses a weak cipher mode", "info"),
    "B306": ("creates a temporary file name insecurely (mktemp)", "low"),
    "B307": ("evaluates a string as code with eval()", None),
    "B308": ("marks text as safe HTML", "info"),
    "B310": ("opens a URL with urllib (network, or file:// reads)", "medium"),
    "B311": ("uses a non-cryptographic random generator", "info"),
    "B312": ("uses telnet", "medium"),
    "B321": ("uses FTP (data leaves unencrypted)", "medium"),
    "B323": ("turns off TLS certificate checks", "medium"),
    "B324": ("uses a weak hash (MD5/SHA1)", "info"),
    "B401": ("imports telnetlib", "low"),
    "B402": ("imports ftplib", "low"),
    "B403": ("imports pickle (unpickling can run any code)", "low"),
    "B404": ("imports subprocess: can start other programs", "low"),
    "B411": ("uses xmlrpc (parses XML from the network)", "low"),
    "B413": ("imports the abandoned pycrypto", "info"),
    "B501": ("turns off TLS certificate checks in requests", "medium"),
    "B502": ("uses an outdated TLS version", "info"),
    "B503": ("uses outdated TLS defaults", "info"),
    "B504": ("uses TLS without a version", "info"),
    "B505": ("uses a weak cryptographic key", "info"),
    "B506": ("loads YAML that can build any Python object", None),
    "B507": ("accepts any SSH host key", "medium"),
    "B601": ("runs a shell command over SSH (paramiko)", "medium"),
    "B602": ("runs a shell command (subprocess with shell=True)", "medium"),
    "B603": ("starts another program (subprocess)", "low"),
    "B604": ("runs a shell command (shell=True)", "medium"),
    "B605": ("runs a shell command (os.system/os.popen)", "medium"),
    "B606": ("starts or replaces a process without a shell (os.exec*/os.spawn*)", "low"),
    "B607": ("starts a program found through PATH", "low"),
    "B608": ("builds SQL from strings (an injection bug, not a malware signal)", "info"),
    "B609": ("runs a command with a shell wildcard", "low"),
    "B612": ("listens for logging configuration on a socket (remote code execution)",
             "medium"),
    "B613": ("holds bidirectional Unicode control characters: the code may not read as it "
             "runs (trojan source)", "high"),
    "B614": ("loads a PyTorch file (unpickling can run any code)", "medium"),
    "B615": ("downloads a Hugging Face model without pinning a revision", "low"),
    "B701": ("renders Jinja2 templates without autoescape", "info"),
    "B702": ("uses Mako templates", "info"),
    "B703": ("marks Django text as safe HTML", "info"),
    "B704": ("marks text as safe markup", "info"),
}


def reword(test_id: str, text: str, severity: str) -> tuple[str, str]:
    """(message, severity) of a Bandit finding, for someone vetting a dependency."""
    sentence, triage_severity = TRIAGE.get(test_id, (None, None))
    return sentence or text, triage_severity or severity

"""A first untrusted script: it says hello, then looks around the way malware would."""

import os
import socket

print("hello from inside the sandbox")
print(f"running as uid {os.getuid()} in {os.getcwd()}")
print(f"environment variables I can see: {sorted(os.environ)}")

for path in ("/etc/shadow", os.path.expanduser("~/.ssh/id_rsa"), "/root/.bash_history"):
    try:
        with open(path) as handle:
            handle.read(1)
        print(f"read {path}: allowed")
    except OSError as exc:
        print(f"read {path}: blocked ({exc.strerror})")

try:
    socket.create_connection(("pypi.org", 443), timeout=2).close()
    print("network: reached pypi.org")
except OSError as exc:
    print(f"network: blocked ({exc.strerror or exc})")

with open("notes.txt", "w") as handle:
    handle.write("scratch is the only writable place\n")
print("wrote notes.txt in the scratch dir; it disappears with the sandbox")

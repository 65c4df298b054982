"""Network egress for sandboxes: the allow-list rules and the per-run host proxy.

This package module stays import-free: backends name `GUEST_NET_DIR` on every run, and
the proxy's code loads only for runs with an allow-list.
"""

GUEST_NET_DIR = "/detain/net"  # where a backend shows the run's proxy socket dir inside

"""Network egress for sandboxes: the allow-list rules and the per-run host proxy."""

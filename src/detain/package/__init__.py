"""`detain package`: fetch on the host, then install, import and exercise in sandboxes."""

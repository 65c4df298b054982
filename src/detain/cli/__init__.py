"""The `detain` command: a thin layer over the Python API."""

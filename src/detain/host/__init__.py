"""Host-side machinery shared by every backend: run dirs, supervision, limits, privileges."""

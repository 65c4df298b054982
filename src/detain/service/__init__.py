"""detain as a code-execution service: Judge0's HTTP API and detain's own (README: Run it
as a service). Embedded by default; scaled out on Celery, Redis and PostgreSQL."""

"""Probes of who configures a run: a project's own files must never configure or weaken its sandbox."""

from __future__ import annotations

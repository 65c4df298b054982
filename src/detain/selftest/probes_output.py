"""Probes of hostile output: terminal escapes, forged records and floods must never reach a person or a count."""

from __future__ import annotations

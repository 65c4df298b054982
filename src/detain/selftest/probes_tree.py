"""Probes of hostile trees: what a job leaves in scratch must never crash or mislead the host side."""

from __future__ import annotations

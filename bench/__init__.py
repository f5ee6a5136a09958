"""Benchmarks of the batch engine (see bench/README.md)."""

from __future__ import annotations

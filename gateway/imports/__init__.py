"""Existing tokens without reissue (SPEC §10): import sources (sources, sanctum) and the
gateway-side verifier for imported tokens (legacy)."""

from __future__ import annotations

from gateway.imports.sources import KINDS, SourceError, read_jsonl, run_import

__all__ = ["KINDS", "SourceError", "read_jsonl", "run_import"]

"""Audit log (being built)."""

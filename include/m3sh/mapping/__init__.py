"""Declarative field mapping between CRMs, m3ter and ERPs (pure functions, unit tested)."""

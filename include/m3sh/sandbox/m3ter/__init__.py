"""m3ter emulator: Config API + Ingest API on one port, driven by the official ``m3ter`` SDK."""

from m3sh.sandbox.m3ter.app import M3terEmulator

__all__ = ["M3terEmulator"]

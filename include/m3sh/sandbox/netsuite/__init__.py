"""NetSuite SuiteTalk REST emulator: several accounts, TBA auth, record API, SuiteQL, governance."""

from m3sh.sandbox.netsuite.emulator import NetSuiteEmulator

__all__ = ["NetSuiteEmulator"]

"""HubSpot CRM emulator (objects v3, search, associations v4, properties, private-app auth, limits)."""

from m3sh.sandbox.hubspot.app import HubSpotEmulator

__all__ = ["HubSpotEmulator"]

"""The m3sh sandbox: stateful local emulators of m3ter, HubSpot, NetSuite and Salesforce, plus moto.

See :mod:`m3sh.sandbox.runner` for ``m3sh sandbox up|down|reset|status`` and
:mod:`m3sh.sandbox.common` for the admin/fault API every emulator shares.
"""

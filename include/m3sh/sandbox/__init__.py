"""The m3sh sandbox: stateful local emulators of m3ter, HubSpot, NetSuite and Salesforce, plus moto.

See :mod:`m3sh.sandbox.runner` for ``m3sh sandbox up|down|reset|status`` and
:mod:`m3sh.sandbox.common` for the admin/fault API every emulator shares.
"""

from m3sh.sandbox_extra import require_sandbox_extra

# Fail here, naming the extra, rather than on the first emulator's "No module named 'moto'".
require_sandbox_extra()

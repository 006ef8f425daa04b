"""Run one emulator in this process: ``python -m m3sh.sandbox.serve m3ter --port 8711 --seed demo``.

One process per emulator (rather than one process for all) keeps the GIL of a busy ingest
emulator from slowing the others, and lets chaos tests kill one system at a time.
"""

from __future__ import annotations

import argparse
import gc
import importlib

import uvicorn

from m3sh.sandbox.common import Emulator, build_asgi

EMULATORS: dict[str, str] = {
    "m3ter": "m3sh.sandbox.m3ter:M3terEmulator",
    "hubspot": "m3sh.sandbox.hubspot:HubSpotEmulator",
    "netsuite": "m3sh.sandbox.netsuite:NetSuiteEmulator",
    "salesforce": "m3sh.sandbox.salesforce:SalesforceEmulator",
    "platform": "m3sh.sandbox.platform:PlatformEmulator",
}


# The production servers each emulator's listener stands in for. With M3SH_SANDBOX_SPEC_CHECK=1 the
# spec guard (m3sh.sandbox.specguard) judges the traffic of those listed here against the published
# OpenAPI documents, and checks that every operation arrives at a listener whose server the
# document lists for it.
SPEC_SERVERS: dict[str, tuple[str, ...]] = {
    "m3ter": ("https://api.m3ter.com",
              # TEMPORARY, the one place measurements are special: until the Ingest API gets its own
              # listener, this port also stands in for ingest.m3ter.com (the document serves
              # POST /organizations/{orgId}/measurements there only). Then the config listener
              # gets only api.m3ter.com and the ingest listener only ingest.m3ter.com.
              "https://ingest.m3ter.com"),
    "hubspot": ("https://api.hubapi.com",),
}


def load_emulator(name: str) -> Emulator:
    module_name, _, cls_name = EMULATORS[name].partition(":")
    cls = getattr(importlib.import_module(module_name), cls_name)
    emulator: Emulator = cls()
    return emulator


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("emulator", choices=sorted(EMULATORS))
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--seed", default="demo", choices=["demo", "empty"])
    parser.add_argument("--limits", default="on", choices=["on", "off"])
    args = parser.parse_args(argv)
    emulator = load_emulator(args.emulator)
    emulator.limits_enabled = args.limits == "on"
    emulator.reset(args.seed)
    # Modules and the seed out of the cyclic GC's full collections (freed by refcount as usual):
    # a 30-50 ms full pass stalls the event loop, and the requests queued meanwhile then meet the
    # rate limiter together, as a burst the client never sent.
    gc.freeze()
    uvicorn.run(
        build_asgi(emulator, SPEC_SERVERS.get(args.emulator)),
        host=args.host,
        port=args.port,
        log_level="warning",
        access_log=False,
        timeout_keep_alive=30,
    )


if __name__ == "__main__":
    main()

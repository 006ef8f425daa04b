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
        build_asgi(emulator),
        host=args.host,
        port=args.port,
        log_level="warning",
        access_log=False,
        timeout_keep_alive=30,
    )


if __name__ == "__main__":
    main()

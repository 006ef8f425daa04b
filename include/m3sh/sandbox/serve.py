"""Run one emulator in this process: ``python -m m3sh.sandbox.serve m3ter --port 8711 --seed demo``.

One process per emulator (rather than one process for all) keeps the GIL of a busy ingest
emulator from slowing the others, and lets chaos tests kill one system at a time.
"""

from __future__ import annotations

import argparse
import asyncio
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


# The production servers each emulator's listeners stand in for, by (emulator, listener role; None
# for the main port). With M3SH_SANDBOX_SPEC_CHECK=1 the spec guard (m3sh.sandbox.specguard) judges
# the traffic of those listed here against the published OpenAPI documents, and checks that every
# operation arrives at a listener whose server the document lists for it (m3ter serves
# POST /organizations/{orgId}/measurements at ingest.m3ter.com only).
SPEC_SERVERS: dict[tuple[str, str | None], tuple[str, ...]] = {
    ("m3ter", None): ("https://api.m3ter.com",),
    ("m3ter", "ingest"): ("https://ingest.m3ter.com",),
    ("hubspot", None): ("https://api.hubapi.com",),
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
    parser.add_argument("--listen", action="append", default=[], metavar="ROLE=PORT",
                        help="also serve the emulator's listener ROLE on PORT (e.g. m3ter's ingest=8718)")
    args = parser.parse_args(argv)
    listeners: list[tuple[str | None, int]] = [(None, args.port)]
    for spec in args.listen:
        role, sep, port = spec.partition("=")
        if not sep or not port.isdigit():
            parser.error(f"--listen wants ROLE=PORT, got {spec!r}")
        listeners.append((role, int(port)))
    emulator = load_emulator(args.emulator)
    emulator.limits_enabled = args.limits == "on"
    emulator.reset(args.seed)
    # Modules and the seed out of the cyclic GC's full collections (freed by refcount as usual):
    # a 30-50 ms full pass stalls the event loop, and the requests queued meanwhile then meet the
    # rate limiter together, as a burst the client never sent.
    gc.freeze()
    servers = [
        uvicorn.Server(uvicorn.Config(build_asgi(emulator, role, SPEC_SERVERS.get((args.emulator, role))),
                                      host=args.host, port=port, log_level="warning", access_log=False,
                                      timeout_keep_alive=30,
                                      http="h11" if role in emulator.case_preserving_roles else "auto"))
        for role, port in listeners
    ]
    # One event loop (uvloop where uvicorn would pick it) serves every listener of the process: they
    # share the emulator's state. On SIGTERM each server exits and re-raises it to the next one.
    with asyncio.Runner(loop_factory=servers[0].config.get_loop_factory()) as runner:
        runner.run(_serve_all(servers))


async def _serve_all(servers: list[uvicorn.Server]) -> None:
    await asyncio.gather(*(server.serve() for server in servers))


if __name__ == "__main__":
    main()

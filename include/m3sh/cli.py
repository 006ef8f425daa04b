"""The ``m3sh`` command line: config validation, the sandbox, the demo and operational helpers.

argparse rather than click/typer: the CLI is small, and ``m3sh config validate`` must start fast
in a pre-commit hook, so it must not import Airflow.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path

from m3sh import __version__
from m3sh.exceptions import ConfigError


def _cmd_config_validate(args: argparse.Namespace) -> int:
    from m3sh.config import config_warnings, parse_config, read_config_text

    try:
        text, source = read_config_text(args.path)
        cfg = parse_config(text, source)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 1
    for warning in config_warnings(cfg, text, source):  # valid, but something could not be checked
        print(f"warning: {warning}", file=sys.stderr)
    print(
        f"OK {args.path or 'default config'}: {len(cfg.crm.sources)} CRM source(s), {len(cfg.usage.feeds)} usage "
        f"feed(s), {len(cfg.invoicing.destinations)} destination(s), {len(cfg.invoicing.routes)} route(s), "
        f"{len(cfg.triggers)} trigger rule(s), {len(cfg.alerting.notifiers)} notifier(s)"
    )
    return 0


def _cmd_config_reference(args: argparse.Namespace) -> int:
    from m3sh.config_reference import render_reference

    print(render_reference())
    return 0


def _sandbox(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from m3sh.sandbox.runner import Sandbox, SandboxEndpoints

    endpoints = SandboxEndpoints() if args.port_base is None else SandboxEndpoints(port_base=args.port_base)
    return Sandbox(Path(args.root).resolve(), endpoints)


def _cmd_init(args: argparse.Namespace) -> int:
    from m3sh.scaffold import init_project

    directory = Path(args.dir).resolve()
    try:
        written = init_project(directory, force=args.force)
    except ConfigError as exc:
        print(f"m3sh init: {exc}", file=sys.stderr)
        return 1
    for w in written:
        print(f"{'replaced' if w.replaced else 'wrote'} {w.path}")
    print(f"The DAGs read {directory / 'm3sh.yaml'} (or $M3SH_CONFIG): edit it, then "
          f"`m3sh config validate {directory / 'm3sh.yaml'}`.")
    return 0


def _cmd_sandbox_up(args: argparse.Namespace) -> int:
    sb = _sandbox(args)
    t0 = time.monotonic()
    print(f"starting sandbox (seed={args.seed}, limits={'on' if not args.no_limits else 'off'}) ...", flush=True)
    sb.up(seed=args.seed, limits=not args.no_limits)
    print(f"sandbox healthy in {time.monotonic() - t0:.1f}s; connections: source {sb.dir / 'env'}")
    for name, ok in sb.status().items():
        print(f"  {name:<11} {sb.endpoints.url(name)}  {'ok' if ok else 'DOWN'}")
    if args.detach:
        return 0
    print("Ctrl-C stops the sandbox.")
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        sb.down()
    return 0


def _cmd_sandbox_down(args: argparse.Namespace) -> int:
    _sandbox(args).down()
    return 0


def _cmd_sandbox_reset(args: argparse.Namespace) -> int:
    _sandbox(args).reset(args.seed)
    print(f"sandbox reset to seed {args.seed!r}")
    return 0


def _cmd_sandbox_status(args: argparse.Namespace) -> int:
    status = _sandbox(args).status()
    print(json.dumps(status, indent=2))
    return 0 if all(status.values()) else 1


def _cmd_demo(args: argparse.Namespace) -> int:
    from m3sh.demo import run_demo

    return run_demo(Path(args.root).resolve(), port=args.port, once=args.once, only=args.only)


def _cmd_triggers_sync(args: argparse.Namespace) -> int:
    # stdout carries only the JSON result, for scripts: everything the command runs prints (Airflow
    # and its task SDK log to stdout, e.g. an empty-Fernet-key warning) goes to stderr instead.
    out = sys.stdout
    with contextlib.redirect_stdout(sys.stderr):
        from m3sh.automation.notifications import sync_notifications

        result = sync_notifications(args.config, webhook_url=args.webhook_url, dry_run=args.dry_run)
    print(json.dumps(result, indent=2), file=out)
    return 0


def _cmd_preflight(args: argparse.Namespace) -> int:
    """Read-only checks of the config against the systems it names; exit 1 on any failed check."""
    out = sys.stdout
    with contextlib.redirect_stdout(sys.stderr):  # Airflow's own start-up output must not mix in
        from m3sh.preflight import render_json, render_text, run_preflight

        try:
            results = run_preflight(args.config)
        except ConfigError as exc:
            print(exc, file=sys.stderr)
            return 2
    print(render_json(results) if args.json else render_text(results), file=out)
    return 0 if all(r.ok for r in results) else 1


def _cmd_triggers_backfill_index(args: argparse.Namespace) -> int:
    """Index trigger-ledger entries written before the audit index existed (idempotent, resumable)."""
    out = sys.stdout
    with contextlib.redirect_stdout(sys.stderr):  # stdout carries only the JSON result
        from m3sh.automation.ledger import Ledger
        from m3sh.config import load_config
        from m3sh.storage import Storage

        result = Ledger(Storage.from_config(load_config(args.config).storage)).backfill_index(
            limit=args.limit, verify=args.verify)
    print(json.dumps(result, indent=2), file=out)
    return 0


def _cmd_pools_sync(args: argparse.Namespace) -> int:
    """Create/resize the Airflow pools m3sh.yaml asks for (NetSuite concurrency per account, usage ingest).

    Uses ``airflow pools import`` so it works against whatever metadata DB the environment points
    at (SQLite demo, Postgres in production) without m3sh touching the DB itself.
    """
    import os
    import shutil
    import subprocess
    import tempfile

    from m3sh.config import load_config
    from m3sh.dagkit.pools import required_pools

    pools = required_pools(load_config(args.config))
    if not pools:
        print("no pools required by this config")
        return 0
    spec = {name: {"slots": slots, "description": description,
                   "include_deferred": False} for name, (slots, description) in pools.items()}
    for name, (slots, description) in pools.items():
        print(f"pool {name}: {slots} slot(s) ({description})")
    if args.dry_run:
        return 0
    airflow = shutil.which("airflow") or str(Path(sys.executable).parent / "airflow")
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as fh:
        json.dump(spec, fh)
    try:
        done = subprocess.run([airflow, "pools", "import", fh.name], capture_output=True, text=True,
                              env=os.environ.copy(), check=False)
    finally:
        Path(fh.name).unlink(missing_ok=True)
    if done.returncode != 0:
        print(done.stderr.strip()[-2000:], file=sys.stderr)
    return done.returncode


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="m3sh", description="m3ter meshed into your stack, on Airflow 3.")
    parser.add_argument("--version", action="version", version=f"m3sh {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    cfg = sub.add_parser("config", help="validate or document m3sh.yaml").add_subparsers(dest="sub", required=True)
    v = cfg.add_parser("validate", help="validate a config file; errors name the YAML path and line")
    v.add_argument("path", nargs="?", default=None)
    v.set_defaults(func=_cmd_config_validate)
    r = cfg.add_parser("reference", help="print the config reference (Markdown) generated from the models")
    r.set_defaults(func=_cmd_config_reference)

    ini = sub.add_parser("init", help="write the m3sh DAG files and a starter m3sh.yaml into an Airflow "
                                      "DAGs folder")
    ini.add_argument("dir", nargs="?", default=".", help="the Airflow DAGs folder (default: current)")
    ini.add_argument("--force", action="store_true", help="replace files that exist already")
    ini.set_defaults(func=_cmd_init)

    sb = sub.add_parser("sandbox", help="local emulators of m3ter, HubSpot, NetSuite, Salesforce and AWS")
    sbs = sb.add_subparsers(dest="sub", required=True)
    for name, func in (("up", _cmd_sandbox_up), ("down", _cmd_sandbox_down), ("reset", _cmd_sandbox_reset),
                       ("status", _cmd_sandbox_status)):
        p = sbs.add_parser(name)
        p.add_argument("--root", default=".", help="folder holding .sandbox/ (default: current)")
        # default resolved by the sandbox itself: the parser must build without the sandbox extra
        p.add_argument("--port-base", type=int, default=None, help="first port (default: 8710)")
        if name in ("up", "reset"):
            p.add_argument("--seed", default="demo", choices=["demo", "empty"])
        if name == "up":
            p.add_argument("--detach", action="store_true", help="return once healthy, leave it running")
            p.add_argument("--no-limits", action="store_true", help="switch the documented rate limits off")
        p.set_defaults(func=func)

    d = sub.add_parser("demo", help="sandbox + Airflow standalone + one run of each use case")
    d.add_argument("--root", default=".")
    d.add_argument("--port", type=int, default=8080)
    d.add_argument("--once", action="store_true", help="run the demo DAGs, print results and stop")
    d.add_argument("--only", action="append", metavar="DAG_ID",
                   help="run just this use-case DAG (repeatable; default: all, in data-flow order)")
    d.set_defaults(func=_cmd_demo)

    pf = sub.add_parser("preflight", help="read-only go-live checks of the config against the systems it names "
                                          "(exit 1 on any failure)")
    pf.add_argument("--config", default=None, help="m3sh.yaml (default: $M3SH_CONFIG or the demo config)")
    pf.add_argument("--json", action="store_true", help="machine-readable output")
    pf.set_defaults(func=_cmd_preflight)

    pl = sub.add_parser("pools", help="Airflow pools from m3sh.yaml").add_subparsers(dest="sub", required=True)
    ps = pl.add_parser("sync", help="create or resize the pools the config needs (airflow pools import)")
    ps.add_argument("--config", default=None)
    ps.add_argument("--dry-run", action="store_true")
    ps.set_defaults(func=_cmd_pools_sync)

    t = sub.add_parser("triggers", help="plan automation helpers").add_subparsers(dest="sub", required=True)
    s = t.add_parser("sync-notifications", help="create/update m3ter notifications + webhook from the rules")
    s.add_argument("--config", default=None)
    s.add_argument("--webhook-url", required=True)
    s.add_argument("--dry-run", action="store_true")
    s.set_defaults(func=_cmd_triggers_sync)
    b = t.add_parser("backfill-index", help="index trigger-ledger entries written before the audit index existed")
    b.add_argument("--config", default=None)
    b.add_argument("--limit", type=int, default=None, help="index at most this many entries (default: all)")
    b.add_argument("--verify", action="store_true",
                   help="also read every indexed entry and repair an index that lags behind it")
    b.set_defaults(func=_cmd_triggers_backfill_index)
    return parser


def main(argv: list[str] | None = None) -> int:
    from m3sh.sandbox_extra import SandboxExtraMissing

    args = build_parser().parse_args(argv)
    try:
        rc: int = args.func(args)
    except SandboxExtraMissing as exc:  # `m3sh sandbox|demo` on a base install: say what to install
        print(f"m3sh: {exc}", file=sys.stderr)
        return 2
    return rc


if __name__ == "__main__":
    sys.exit(main())

"""Parse time of every DAG file with a 50-destination config: ``python -m benchmarks.dag_parse``.

The dag-processor re-parses every file every ``min_file_process_interval`` seconds, so a DAG file
that reads config slowly, touches the network or builds an oversized graph costs the whole
deployment. This writes a copy of the demo ``m3sh.yaml`` with ``--destinations`` NetSuite
destinations (and one route each), points ``M3SH_CONFIG`` at it and parses each file in ``dags/``
in a fresh process with ``DagBag(dag_folder=<file>)``. Only the ``DagBag`` call is timed: the
interpreter, ``import airflow`` and ``airflow.sdk`` are already paid by the dag-processor before it
parses a file.

``seconds`` per file is the first (cold) parse in that process, which includes importing m3sh's
modules; ``warm_seconds`` parses the same file again in the same process (modules cached, as in a
long-lived processor). The target applies to the cold figure. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from benchmarks._common import emit, run_child

DAGS_DIR = Path(__file__).resolve().parents[1] / "dags"


def config_with_destinations(n: int) -> dict[str, Any]:
    """The demo config with ``n`` NetSuite destinations (two accounts, alternating) and one route each."""
    from m3sh.config import DEFAULT_CONFIG_PATH

    cfg = yaml.safe_load(DEFAULT_CONFIG_PATH.read_text())
    inv = cfg["invoicing"]
    template = next(d for d in inv["destinations"] if d["type"] == "netsuite")
    others = [d for d in inv["destinations"] if d["type"] != "netsuite"]
    dests, routes = [], []
    for i in range(1, n + 1):
        d = copy.deepcopy(template)
        d.update(name=f"netsuite_{i:02d}", conn_id="netsuite_default" if i % 2 else "netsuite_eu",
                 subsidiary_id=str(i), pool=f"m3sh_netsuite_{i:02d}")
        dests.append(d)
        routes.append({"name": f"subsidiary_{i:02d}", "when": {"subsidiary": [f"sub{i:02d}"]},
                       "to": [d["name"], *[o["name"] for o in others if o["type"] == "s3"]]})
    inv["destinations"] = dests + others
    inv["routes"] = routes
    return cfg  # type: ignore[no-any-return]


def child(path: str) -> None:
    """Parse one DAG file (cold, then warm) and print the timings as JSON."""
    # Airflow itself (the DagBag and the authoring SDK every DAG file uses) is loaded before the clock
    # starts, as it is in a dag-processor; m3sh's own modules are not.
    import airflow.sdk  # noqa: F401
    from airflow.dag_processing.dagbag import DagBag

    t0 = time.perf_counter()
    bag = DagBag(dag_folder=path)
    cold = time.perf_counter() - t0
    t0 = time.perf_counter()
    DagBag(dag_folder=path)
    warm = time.perf_counter() - t0
    emit({"file": Path(path).name, "seconds": cold, "warm_seconds": warm, "dags": sorted(bag.dag_ids),
          "tasks": sum(len(d.tasks) for d in bag.dags.values()),
          "import_errors": {Path(k).name: str(v).splitlines()[-1] for k, v in bag.import_errors.items()}})


def run(destinations: int) -> dict[str, Any]:
    from m3sh.config import parse_config

    tmp = Path(tempfile.mkdtemp(prefix="m3sh-bench-dagparse-"))
    text = yaml.safe_dump(config_with_destinations(destinations), sort_keys=False)
    parse_config(text)  # fail here, with the config's own message, rather than as a DAG import error
    cfg_path = tmp / "m3sh.yaml"
    cfg_path.write_text(text)
    os.environ["M3SH_CONFIG"] = str(cfg_path)
    os.environ.setdefault("AIRFLOW_HOME", str(tmp / "airflow"))
    os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
    per_file: dict[str, dict[str, Any]] = {}
    errors: dict[str, str] = {}
    for path in sorted(DAGS_DIR.glob("*.py")):
        out = run_child("benchmarks.dag_parse", ["--child", str(path)], timeout=300)
        per_file[path.name] = {"seconds": round(out["seconds"], 4), "warm_seconds": round(out["warm_seconds"], 4),
                               "dags": out["dags"], "tasks": out["tasks"]}
        errors.update(out["import_errors"])
        print(f"{path.name}: {out['seconds']:.3f}s cold, {out['warm_seconds']:.3f}s warm, {out['tasks']} tasks",
              flush=True)
    slowest = max(per_file, key=lambda f: per_file[f]["seconds"])
    return {
        "benchmark": "dag_parse",
        "destinations": destinations,
        "files": len(per_file),
        "max_parse_s": per_file[slowest]["seconds"],
        "slowest_file": slowest,
        "max_warm_parse_s": max(v["warm_seconds"] for v in per_file.values()),
        "total_parse_s": round(sum(v["seconds"] for v in per_file.values()), 4),
        "import_errors": len(errors),
        "import_error_detail": errors,
        "per_file": per_file,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--destinations", type=int, default=50)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child)
        return
    result = run(args.destinations)
    print(json.dumps(result["per_file"], indent=1), file=sys.stderr)
    emit(result)


if __name__ == "__main__":
    main()

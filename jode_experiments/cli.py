"""The `jode` command: `jode reproduce [NAME ...] [--quick]`, `jode list`."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path


def _write_json_atomic(path: Path, data: dict) -> None:
    # Write beside the target, then rename: an interrupted run never leaves a truncated file.
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=_jsonable) + "\n")
    os.replace(tmp, path)


def _jsonable(x):
    try:
        import numpy as np

        if isinstance(x, np.generic):
            return x.item()
        if isinstance(x, np.ndarray):
            return x.tolist()
    except ImportError:
        pass
    if hasattr(x, "tolist"):
        return x.tolist()
    return str(x)


def reproduce(names: list[str], quick: bool, results: Path) -> dict:
    from jode_experiments import available

    errors: dict = {}
    experiments = available(errors)
    unknown = [n for n in names if n not in experiments]
    if unknown or (errors and not names):
        broken = "".join(f"\n  {m}: {type(e).__name__}: {e}" for m, e in errors.items())
        raise SystemExit(
            (f"unknown experiment(s) {unknown}; " if unknown else "")
            + f"available: {', '.join(experiments)}"
            + (f"\nexperiment modules that failed to import:{broken}" if broken else "")
        )
    summary = {}
    for name in names or list(experiments):
        out_dir = results / name
        out_dir.mkdir(parents=True, exist_ok=True)
        print(f"[jode] reproduce {name} ({'quick' if quick else 'full'}) -> {out_dir}", flush=True)
        start = time.perf_counter()
        metrics = experiments[name].run(out_dir, quick=quick)
        metrics = dict(metrics, wall_time_s=time.perf_counter() - start, quick=quick)
        _write_json_atomic(out_dir / "metrics.json", metrics)
        summary[name] = metrics
        print(f"[jode] {name}: done in {metrics['wall_time_s']:.1f} s", flush=True)
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="jode", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    rep = sub.add_parser("reproduce", help="run experiments: figures + metrics.json")
    rep.add_argument("names", nargs="*", help="experiments to run (default: all)")
    rep.add_argument("--quick", action="store_true", help="small, fast configurations")
    rep.add_argument("--results", type=Path, default=Path("results"), help="output folder")
    sub.add_parser("list", help="list the experiments")
    ns = parser.parse_args(argv)
    if ns.command == "list":
        from jode_experiments import TARGETS

        for name, (_, description) in TARGETS.items():
            print(f"{name:16s} {description}")
        return 0
    import jode

    jode.configure_cpu()  # before the first JAX computation: one-kernel solve loops
    if ns.quick:
        os.environ["JODE_QUICK"] = "1"
    reproduce(ns.names, ns.quick, ns.results)
    return 0


if __name__ == "__main__":
    sys.exit(main())

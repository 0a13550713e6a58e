"""The `jode` command: `jode reproduce [NAME ...] [--quick]`, `jode summary`, `jode list`."""

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


class ResultsNotWritableError(PermissionError):
    """The results folder (or a target's folder in it) cannot be written."""


def check_writable(results: Path, names) -> None:
    """Fail before any work when `results` or an existing `results/NAME` cannot be written.

    A probe folder is created and removed (permission bits alone mislead on read-only mounts
    and for root); an existing target folder must be writable too, since it is replaced.

    Raises:
        ResultsNotWritableError: naming the folder and what to do.
    """
    import shutil
    import tempfile

    results = Path(results)
    folders = [results] + [results / n for n in names if (results / n).is_dir()]
    for folder in folders:
        try:
            folder.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(tempfile.mkdtemp(prefix=".jode-write-probe-", dir=folder))
        except OSError as exc:
            raise ResultsNotWritableError(
                f"results folder {str(folder)!r} is not writable ({exc.strerror or exc}); "
                "make it writable or choose another with --results PATH"
            ) from exc


def _replace_folder(new: Path, target: Path) -> None:
    # Rename the old folder away, the new one in, then delete the old one: at every moment
    # `target` is either the earlier complete result or the new complete one.
    import shutil
    import uuid

    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old-{uuid.uuid4().hex[:8]}")
        os.rename(target, old)
    try:
        os.rename(new, target)
    except BaseException:
        if old is not None:
            os.rename(old, target)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


#: Where `--device auto` runs a target on a machine with an accelerator. Quick runs and the
#: targets that declare `DEVICE = "cpu"` (one small solve after another: fits, trial
#: networks, the optimizer paths) go to the host CPU: on an H200 every quick target took
#: longer than on two CPU cores (solver 56 s, recovery 174 s, trial 39 s, neural-ode > 300 s
#: vs about 5 minutes for all six), each loop iteration launching its kernels and syncing
#: its predicate. Full runs of the network targets keep the accelerator.
DEVICES = ("auto", "cpu", "accelerator")


def placement(module, quick: bool, device: str = "auto"):
    """(context manager, platform name) for running `module` under `--device device`."""
    import contextlib

    import jax

    default = jax.default_backend()
    if default == "cpu" or device == "accelerator":
        return contextlib.nullcontext(), default
    if device == "cpu" or quick or getattr(module, "DEVICE", None) == "cpu":
        try:
            cpu = jax.devices("cpu")[0]
        except RuntimeError:  # JAX_PLATFORMS without cpu: nothing else to choose
            return contextlib.nullcontext(), default
        return jax.default_device(cpu), "cpu"
    return contextlib.nullcontext(), default


def run_target(name: str, module, quick: bool, results: Path, device: str = "auto") -> dict:
    """Run one target into a sibling temporary folder and swap it in when it completes.

    An interrupted or failed run leaves `results/NAME` as it was; what it wrote is kept in
    `results/NAME.incomplete` for inspection.
    """
    import shutil
    import tempfile

    target = results / name
    work = Path(tempfile.mkdtemp(prefix=f".{name}.running-", dir=results))
    umask = os.umask(0)
    os.umask(umask)
    work.chmod(0o777 & ~umask)  # mkdtemp's folder is private (0o700); results are not
    print(f"[jode] reproduce {name} ({'quick' if quick else 'full'}) -> {target}", flush=True)
    start = time.perf_counter()
    try:
        where, platform = placement(module, quick, device)
        with where:
            metrics = dict(module.run(work, quick=quick))
        metrics.update(wall_time_s=time.perf_counter() - start, quick=quick, platform=platform)
        if quick:
            cannot = getattr(module, "QUICK_CANNOT_MEET", {})
            metrics["quick_cannot_meet"] = [
                dict(flag=flag, reason=reason) for flag, reason in cannot.items()
            ]
        _write_json_atomic(work / "metrics.json", metrics)
    except BaseException:
        kept = results / f"{name}.incomplete"
        shutil.rmtree(kept, ignore_errors=True)
        try:
            os.rename(work, kept)
            print(f"[jode] {name} did not complete: {target} is unchanged; "
                  f"partial output in {kept}", file=sys.stderr, flush=True)
        except OSError:
            shutil.rmtree(work, ignore_errors=True)
        raise
    _replace_folder(work, target)
    print(f"[jode] {name}: done in {metrics['wall_time_s']:.1f} s", flush=True)
    return metrics


def reproduce(names: list[str], quick: bool, results: Path, device: str = "auto") -> dict:
    from jode_experiments import TARGETS

    results = Path(results)
    # Before importing any target (JAX) or running anything: a folder we cannot write is
    # reported at once, not after the first target's work.
    check_writable(results, [n for n in names or TARGETS if n in TARGETS])

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
    try:
        for name in names or list(experiments):
            summary[name] = run_target(name, experiments[name], quick, results, device)
    finally:
        # Also after a failed or interrupted target: the summary covers every target
        # folder present, and those that completed are worth a table.
        _write_summary(results)
    return summary


def _write_summary(results: Path) -> None:
    from jode_experiments.summary import write_summary

    try:
        path = write_summary(results)
    except Exception as exc:  # a summary must never hide the targets' own outcome
        print(f"[jode] could not write {results / 'summary.md'}: {type(exc).__name__}: {exc}",
              file=sys.stderr, flush=True)
    else:
        print(f"[jode] summary of every target in {results}: {path}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="jode", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    rep = sub.add_parser("reproduce", help="run experiments: figures + metrics.json")
    rep.add_argument("names", nargs="*", help="experiments to run (default: all)")
    rep.add_argument("--quick", action="store_true", help="small, fast configurations")
    rep.add_argument("--results", type=Path, default=Path("results"), help="output folder")
    rep.add_argument(
        "--device", choices=DEVICES, default="auto",
        help="auto (default): quick runs and the small-solve targets on the host CPU, full "
        "network trainings on an accelerator if there is one; cpu: everything on the CPU; "
        "accelerator: JAX's default device for everything",
    )
    summ = sub.add_parser("summary", help="(re)write results/summary.md from the metrics.json "
                          "files present, without running anything")
    summ.add_argument("--results", type=Path, default=Path("results"), help="results folder")
    sub.add_parser("list", help="list the experiments")
    ns = parser.parse_args(argv)
    if ns.command == "summary":
        from jode_experiments.summary import write_summary

        print(write_summary(ns.results))
        return 0
    if ns.command == "list":
        from jode_experiments import TARGETS

        for name, (_, description) in TARGETS.items():
            print(f"{name:16s} {description}")
        return 0
    if ns.device == "cpu":  # before JAX starts: no accelerator is initialized at all
        os.environ["JAX_PLATFORMS"] = "cpu"
    import jode

    jode.configure_cpu()  # before the first JAX computation: one-kernel solve loops
    if ns.quick:
        os.environ["JODE_QUICK"] = "1"
    try:
        reproduce(ns.names, ns.quick, ns.results, ns.device)
    except ResultsNotWritableError as exc:
        print(f"jode: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("jode: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())

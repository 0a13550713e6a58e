"""Wall time of each `jode reproduce NAME --quick` target under each `--device` placement.

    python benchmarks/reproduce_devices.py              # every target: cpu, accelerator, auto
    python benchmarks/reproduce_devices.py --targets solver deq --devices cpu accelerator

Each target runs in a fresh process (`jode reproduce NAME --quick --device D`, as a user
runs it) writing into a temporary results folder; the table gives its wall time and exit
status, and the accelerator/CPU ratio where both ran. A target that runs past --timeout
seconds is stopped and reported as such (the others go on). On a machine without a GPU
only the cpu column runs. The load average is printed with the table: on a shared machine
the times are upper bounds.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

TARGETS = ("solver", "recovery", "trial", "neural-ode", "ode-optimizer", "deq")


def gpu_present() -> bool:
    """Whether JAX sees a GPU, asked in a child process (this one never starts JAX)."""
    probe = "import jax; print(any(d.platform == 'gpu' for d in jax.devices()))"
    try:
        out = subprocess.run(
            [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120
        )
    except subprocess.TimeoutExpired:
        return False
    return out.stdout.strip().endswith("True")


def run_target(name: str, device: str, timeout: float) -> tuple[float, str]:
    """(wall seconds, outcome) of `jode reproduce name --quick --device device`."""
    with tempfile.TemporaryDirectory() as results:
        cmd = [sys.executable, "-m", "jode_experiments.cli", "reproduce", name, "--quick",
               "--results", results, "--device", device]
        start = time.perf_counter()
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return time.perf_counter() - start, f"stopped after {timeout:.0f} s"
        seconds = time.perf_counter() - start
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or ["?"])[-1]
            return seconds, f"exit {done.returncode}: {last[:80]}"
        return seconds, "ok"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", nargs="+", default=list(TARGETS), choices=TARGETS)
    parser.add_argument("--devices", nargs="+", default=["cpu", "accelerator", "auto"],
                        choices=["cpu", "accelerator", "auto"])
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per target")
    args = parser.parse_args()

    platforms = list(args.devices)
    if not gpu_present():
        print("no GPU visible to JAX: only the cpu column runs")
        platforms = [p for p in platforms if p == "cpu"]
    print(f"load average at start: {os.getloadavg()}")
    times: dict[tuple[str, str], float] = {}
    print("| target | " + " | ".join(f"{p} (s)" for p in platforms) + " | accelerator / cpu |")
    print("|---|" + "---|" * len(platforms) + "---|")
    for name in args.targets:
        cells = []
        for platform in platforms:
            seconds, outcome = run_target(name, platform, args.timeout)
            if outcome == "ok":
                times[name, platform] = seconds
                cells.append(f"{seconds:.1f}")
            else:
                cells.append(f"{seconds:.1f} ({outcome})")
        both = (name, "cpu") in times and (name, "accelerator") in times
        ratio = f"{times[name, 'accelerator'] / times[name, 'cpu']:.2f}" if both else "—"
        print(f"| {name} | " + " | ".join(cells) + f" | {ratio} |", flush=True)
    print(f"load average at end: {os.getloadavg()}")


if __name__ == "__main__":
    main()

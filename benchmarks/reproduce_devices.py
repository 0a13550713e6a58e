"""Wall time of each `jode reproduce NAME --quick` target on every platform this machine has.

    python benchmarks/reproduce_devices.py                     # every target, cpu and gpu
    python benchmarks/reproduce_devices.py --targets solver deq --platforms cpu

Each target runs in a fresh process (`JAX_PLATFORMS=cpu` or `cuda`, everything else as a
user runs it) writing into a temporary results folder; the table gives its wall time and
exit status, and the GPU/CPU ratio where both ran. A target that runs past --timeout
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
JAX_PLATFORM = {"cpu": "cpu", "gpu": "cuda"}


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


def run_target(name: str, platform: str, timeout: float) -> tuple[float, str]:
    """(wall seconds, outcome) of `jode reproduce name --quick` on one platform."""
    env = dict(os.environ, JAX_PLATFORMS=JAX_PLATFORM[platform])
    with tempfile.TemporaryDirectory() as results:
        cmd = [sys.executable, "-m", "jode_experiments.cli", "reproduce", name, "--quick",
               "--results", results]
        start = time.perf_counter()
        try:
            done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
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
    parser.add_argument("--platforms", nargs="+", default=["cpu", "gpu"], choices=["cpu", "gpu"])
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per target")
    args = parser.parse_args()

    platforms = list(args.platforms)
    if "gpu" in platforms and not gpu_present():
        print("no GPU visible to JAX: the gpu column is left out")
        platforms.remove("gpu")
    print(f"load average at start: {os.getloadavg()}")
    times: dict[tuple[str, str], float] = {}
    print("| target | " + " | ".join(f"{p} (s)" for p in platforms) + " | gpu / cpu |")
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
        both = (name, "cpu") in times and (name, "gpu") in times
        ratio = f"{times[name, 'gpu'] / times[name, 'cpu']:.2f}" if both else "—"
        print(f"| {name} | " + " | ".join(cells) + f" | {ratio} |", flush=True)
    print(f"load average at end: {os.getloadavg()}")


if __name__ == "__main__":
    main()

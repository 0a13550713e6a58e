"""Run a `jode.sweep` (and a multi-start `fit_sweep`) over several processes or hosts.

Every process calls `jax.distributed.initialize` (coordinator address, number of processes,
its own id), after which `jax.devices()` lists the devices of all processes; `jode.sweep`
shards the batch over all of them, each process computes its share, and the results are
gathered on every process (each process gets every result). Cross-process collectives are
gloo's TCP ones on CPU (`jax_cpu_collectives_implementation="gloo"`) and NCCL on GPUs.

On one machine, N localhost worker processes (this launcher picks a free port and starts
them with their coordinator address and process id):

    python scripts/sweep_multihost.py --num-processes 2

On N hosts, one process per host with explicit flags (the coordinator is process 0's host):

    python scripts/sweep_multihost.py --coordinator HOST0:PORT --num-processes N \\
        --process-id I

The sweep is the final state y(10) of Lotka-Volterra (prey-predator, jode.models) over a
grid of (α, β) with δ = 3, γ = 1 from (1, 1) (Tsit5, rtol = atol = 1e-8). With `--fit`, a
multi-start fit of (y0, α, β, δ, γ) to noise-free data of the classic parameters (1.5, 1, 3,
1) from guesses scattered around them follows. `--out DIR` writes each process's results
to DIR/process{I}.npz; `--num-processes 1` runs in this process without
`jax.distributed` (the single-process reference).
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time
from pathlib import Path


def _parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--num-processes", type=int, default=2,
                   help="processes in all (default 2)")
    p.add_argument("--process-id", type=int, default=None,
                   help="this process's id, 0..N-1 (one process per host); omitted: start N "
                        "localhost workers")
    p.add_argument("--coordinator", default=None,
                   help="HOST:PORT of process 0 (required with --process-id)")
    p.add_argument("--local-devices", type=int, default=1,
                   help="CPU devices per process (jax_num_cpu_devices; default 1)")
    p.add_argument("--n", type=int, default=64, help="sweep size: an n-point (α, β) grid "
                   "rounded to a square (default 64)")
    p.add_argument("--fit", action="store_true", help="also run a multi-start fit_sweep")
    p.add_argument("--starts", type=int, default=4, help="multi-start guesses (default 4)")
    p.add_argument("--out", default=None, help="folder for process{I}.npz")
    p.add_argument("--timeout", type=float, default=600.0,
                   help="seconds the launcher waits for its workers (default 600)")
    args = p.parse_args(argv)
    if args.num_processes < 1:
        p.error(f"--num-processes must be >= 1; got {args.num_processes}")
    if args.process_id is not None:
        if not 0 <= args.process_id < args.num_processes:
            p.error(f"--process-id must be in 0..{args.num_processes - 1}; got "
                    f"{args.process_id}")
        if args.coordinator is None:
            p.error("--process-id needs --coordinator HOST:PORT (process 0's address)")
    if args.n < 1 or args.starts < 1 or args.local_devices < 1:
        p.error("--n, --starts and --local-devices must be >= 1")
    return args


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(args) -> int:
    """Start N localhost workers of this script and wait for them (non-zero if any fails)."""
    import signal

    def stop(signum, frame):
        raise SystemExit(128 + signum)  # runs the cleanup below: no orphaned workers

    signal.signal(signal.SIGTERM, stop)
    coordinator = f"127.0.0.1:{_free_port()}"
    procs = []
    for i in range(args.num_processes):
        cmd = [sys.executable, __file__, "--num-processes", str(args.num_processes),
               "--process-id", str(i), "--coordinator", coordinator,
               "--local-devices", str(args.local_devices), "--n", str(args.n),
               "--starts", str(args.starts)]
        if args.fit:
            cmd.append("--fit")
        if args.out:
            cmd += ["--out", args.out]
        procs.append(subprocess.Popen(cmd))
    deadline = time.monotonic() + args.timeout
    codes = [None] * len(procs)
    try:
        while any(c is None for c in codes):
            if time.monotonic() > deadline:
                raise TimeoutError(f"workers still running after {args.timeout} s")
            for i, proc in enumerate(procs):
                if codes[i] is None:
                    codes[i] = proc.poll()
            if any(c not in (None, 0) for c in codes):
                break  # one failed: the others would wait for it forever
            time.sleep(0.2)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    codes = [proc.returncode for proc in procs]
    if any(codes):
        print(f"worker exit codes: {codes}", file=sys.stderr)
        return 1
    return 0


def work(args) -> dict:
    """One process: initialize (when distributed), run the sweeps, return their results."""
    import jax

    import jode

    jode.configure_cpu()
    jax.config.update("jax_enable_x64", True)
    jax.config.update("jax_num_cpu_devices", args.local_devices)
    if args.process_id is not None:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(coordinator_address=args.coordinator,
                                   num_processes=args.num_processes,
                                   process_id=args.process_id)
    import jax.numpy as jnp
    import numpy as np

    import jode.models
    from jode import sweeping
    from jode.fitting import LBFGS, TrajectoryLoss

    side = max(1, round(args.n**0.5))
    thetas = sweeping.grid(alpha=jnp.linspace(1.0, 2.0, side), beta=jnp.linspace(0.5, 1.5, side))
    t0 = time.perf_counter()
    final = jode.sweep(_FinalState(), thetas)
    results = dict(thetas=np.asarray(thetas), final=final,
                   sweep_seconds=time.perf_counter() - t0,
                   devices=len(jax.devices()), processes=jax.process_count())
    if args.fit:
        ts = jnp.linspace(0.0, 10.0, 41)
        truth = jnp.asarray([1.0, 1.0, 1.5, 1.0, 3.0, 1.0])
        data = jode.solve(jode.models.lotka_volterra, truth[:2], 0.0, 10.0, truth[2:],
                          saveat=ts, rtol=1e-10, atol=1e-10).ys
        loss = TrajectoryLoss(jode.models.lotka_volterra, ts, data, n_state=2, n_params=6)
        scale = 1.0 + 0.1 * jnp.sin(jnp.arange(args.starts * 6.0).reshape(args.starts, 6))
        starts = truth * scale  # deterministic guesses within 10% of the truth
        t0 = time.perf_counter()
        params, losses = sweeping.fit_sweep(loss, starts, (LBFGS(steps=200),))
        results.update(starts=np.asarray(starts), fit_params=params, fit_losses=losses,
                       fit_seconds=time.perf_counter() - t0)
    return results


class _FinalState:
    """θ = (α, β) -> y(10) of Lotka-Volterra from (1, 1) with δ = 3, γ = 1 (one object, so
    the compiled sweep is reused)."""

    def __call__(self, ab):
        import jax.numpy as jnp

        import jode
        import jode.models

        args = jnp.concatenate([ab, jnp.asarray([3.0, 1.0], ab.dtype)])
        sol = jode.solve(jode.models.lotka_volterra, jnp.ones(2, ab.dtype), 0.0, 10.0, args,
                         solver=jode.Tsit5(), rtol=1e-8, atol=1e-8, throw=False)
        return sol.ys[-1], sol.status

    def __hash__(self):
        return hash(_FinalState)

    def __eq__(self, other):
        return isinstance(other, _FinalState)


def main(argv=None) -> int:
    args = _parse(argv)
    if args.process_id is None and args.num_processes > 1:
        return launch(args)
    results = work(args)
    pid = args.process_id or 0
    if args.out:
        import numpy as np

        Path(args.out).mkdir(parents=True, exist_ok=True)
        final, status = results.pop("final")
        flat = dict(final=final, status=status)
        if "fit_params" in results:
            flat.update(fit_params=results.pop("fit_params"), fit_losses=results.pop(
                "fit_losses"))
        np.savez(Path(args.out) / f"process{pid}.npz", **flat,
                 **{k: np.asarray(v) for k, v in results.items()})
    else:
        final, status = results["final"]
        print(f"process {pid}/{args.num_processes} ({results['devices']} devices): "
              f"{final.shape[0]} final states in {results['sweep_seconds']:.2f} s, "
              f"statuses {sorted(set(status.tolist()))}, first {final[0]}")
        if "fit_losses" in results:
            print(f"process {pid}: fit_sweep losses {results['fit_losses']}, best "
                  f"{results['fit_params'][int(results['fit_losses'].argmin())]}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())

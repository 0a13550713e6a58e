"""Work-precision diagrams of stiff solvers: jode Kvaerno5 and Rodas5 beside diffrax Kvaerno5
and scipy Radau and BDF, on the Bari test-set problems ROBER (t = 1e11), VDPOL (μ = 1000,
t ∈ [0, 2000]) and OREGO (t = 360), over rtol 1e-4 .. 1e-10, in one process.

For every (problem, rtol) the solvers run in turn, `rounds` rounds (interleaved, so that
each sees the same machine load; a solve under 0.1 s runs up to 20 times a round), and each
keeps its minimum wall time; jode and diffrax
are jitted with rtol a traced argument and compiled before timing. The error is the
tolerance-free relative error at t1 against the published reference solution,
max_i |y_i - ref_i| / (atol + |ref_i|); the table also gives it in tolerance units,
max_i |y_i - ref_i| / (atol + rtol |ref_i|) (1 = exactly the accuracy asked for).

    python benchmarks/stiff.py            # rtol 1e-4 .. 1e-10, 3 rounds
    python benchmarks/stiff.py --quick    # rtol 1e-4, 1e-6, 1e-8, 1 round
    python benchmarks/stiff.py --rounds 2 # fewer rounds

Writes benchmarks/results/work_precision.png (error vs wall time, one panel a problem) and
prints a Markdown table. scipy gets NumPy vector fields and their exact Jacobians; jode and
diffrax the same jax.numpy function (Jacobians by forward-mode autodiff).
"""

from __future__ import annotations

import argparse
import os
import time

import jax

import jode  # noqa: E402

jode.configure_cpu()  # one-kernel XLA:CPU solve loops: before any JAX computation

jax.config.update("jax_enable_x64", True)

import diffrax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from scipy.integrate import solve_ivp  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def rober(t, y, k):
    return jnp.stack([
        -k[0] * y[0] + k[2] * y[1] * y[2],
        k[0] * y[0] - k[1] * y[1] ** 2 - k[2] * y[1] * y[2],
        k[1] * y[1] ** 2,
    ])


def vdp(t, y, mu):
    return jnp.stack([y[1], mu * (1.0 - y[0] ** 2) * y[1] - y[0]])


def orego(t, y, p):
    return jnp.stack([
        p[0] * (y[1] + y[0] * (1.0 - p[1] * y[0] - y[1])),
        (y[2] - (1.0 + y[0]) * y[1]) / p[0],
        p[2] * (y[0] - y[2]),
    ])


def rober_np(t, y, k=(0.04, 3e7, 1e4)):
    return np.array([
        -k[0] * y[0] + k[2] * y[1] * y[2],
        k[0] * y[0] - k[1] * y[1] ** 2 - k[2] * y[1] * y[2],
        k[1] * y[1] ** 2,
    ])


def rober_jac(t, y, k=(0.04, 3e7, 1e4)):
    return np.array([
        [-k[0], k[2] * y[2], k[2] * y[1]],
        [k[0], -2 * k[1] * y[1] - k[2] * y[2], -k[2] * y[1]],
        [0.0, 2 * k[1] * y[1], 0.0],
    ])


def vdp_np(t, y, mu=1000.0):
    return np.array([y[1], mu * (1.0 - y[0] ** 2) * y[1] - y[0]])


def vdp_jac(t, y, mu=1000.0):
    return np.array([[0.0, 1.0], [-2 * mu * y[0] * y[1] - 1.0, mu * (1.0 - y[0] ** 2)]])


def orego_np(t, y, p=(77.27, 8.375e-6, 0.161)):
    return np.array([
        p[0] * (y[1] + y[0] * (1.0 - p[1] * y[0] - y[1])),
        (y[2] - (1.0 + y[0]) * y[1]) / p[0],
        p[2] * (y[0] - y[2]),
    ])


def orego_jac(t, y, p=(77.27, 8.375e-6, 0.161)):
    return np.array([
        [p[0] * (1.0 - 2 * p[1] * y[0] - y[1]), p[0] * (1.0 - y[0]), 0.0],
        [-y[1] / p[0], -(1.0 + y[0]) / p[0], 1.0 / p[0]],
        [p[2], 0.0, -p[2]],
    ])


# name: (jax f, numpy f, numpy Jacobian, y0, args, t1, atol, reference at t1 — Bari test
# set, release 2.4)
PROBLEMS = {
    "ROBER t=1e11": (rober, rober_np, rober_jac, [1.0, 0.0, 0.0], [0.04, 3e7, 1e4], 1e11,
                     1e-14, [0.2083340149701255e-07, 0.8333360770334713e-13,
                             0.9999999791665050]),
    "VDP mu=1000": (vdp, vdp_np, vdp_jac, [2.0, 0.0], 1000.0, 2000.0, 1e-10,
                    [0.1706167732170483e01, -0.8928097010247975e00 / 1000.0]),
    "OREGO t=360": (orego, orego_np, orego_jac, [1.0, 2.0, 3.0], [77.27, 8.375e-6, 0.161],
                    360.0, 1e-10,
                    [0.1000814870318523e01, 0.1228178521549917e04, 0.1320554942846706e03]),
}

MAX_STEPS = 200_000
SOLVERS = ("jode Kvaerno5", "jode Rodas5", "diffrax Kvaerno5", "scipy Radau", "scipy BDF")


def accuracy(y, ref, atol):
    """Relative error at t1: max |y - ref| / (atol + |ref|)."""
    y, ref = np.asarray(y), np.asarray(ref)
    return float(np.max(np.abs(y - ref) / (atol + np.abs(ref))))


def units(y, ref, rtol, atol):
    """Error in tolerance units: max |y - ref| / (atol + rtol |ref|)."""
    y, ref = np.asarray(y), np.asarray(ref)
    return float(np.max(np.abs(y - ref) / (atol + rtol * np.abs(ref))))


def make_runners(f, f_np, jac_np, y0, args, t1, atol):
    """name -> call(rtol) returning (y at t1, steps, status 0 = success)."""
    y0j, argsj = jnp.asarray(y0, jnp.float64), jnp.asarray(args, jnp.float64)

    def jode_runner(solver):
        @jax.jit
        def run(rtol):
            sol = jode.solve(f, y0j, 0.0, t1, argsj, solver=solver, rtol=rtol, atol=atol,
                             max_steps=MAX_STEPS, throw=False)
            return sol.ys[-1], sol.stats["steps"], sol.status

        return lambda rtol: run(jnp.asarray(rtol))

    @jax.jit
    def run_diffrax(rtol):
        sol = diffrax.diffeqsolve(
            diffrax.ODETerm(f), diffrax.Kvaerno5(), 0.0, t1, None, y0j, argsj,
            stepsize_controller=diffrax.PIDController(rtol=rtol, atol=atol),
            max_steps=MAX_STEPS, throw=False,
        )
        return sol.ys[-1], sol.stats["num_steps"], sol.result._value

    def scipy_runner(method):
        def run(rtol):
            sol = solve_ivp(f_np, (0.0, t1), y0, method=method, rtol=rtol, atol=atol,
                            jac=jac_np)
            return sol.y[:, -1], sol.t.size - 1, sol.status

        return run

    return {
        "jode Kvaerno5": jode_runner(jode.Kvaerno5()),
        "jode Rodas5": jode_runner(jode.Rodas5()),
        "diffrax Kvaerno5": lambda rtol: run_diffrax(jnp.asarray(rtol)),
        "scipy Radau": scipy_runner("Radau"),
        "scipy BDF": scipy_runner("BDF"),
    }


def measure(rtols, rounds):
    """rows of dicts: problem, solver, rtol, time (min over rounds), steps, status, errors."""
    rows = []
    for name, (f, f_np, jac_np, y0, args, t1, atol, ref) in PROBLEMS.items():
        runners = make_runners(f, f_np, jac_np, y0, args, t1, atol)
        for fn in runners.values():  # compile (rtol is traced: once per solver)
            jax.block_until_ready(fn(rtols[0]))
        for rtol in rtols:
            best = {label: np.inf for label in runners}
            out = {}
            calls = {label: 1 for label in runners}
            for _ in range(rounds):
                for label, fn in runners.items():
                    # Solves under 0.1 s run several times a round (up to 20), so that the
                    # minimum of a millisecond solve is not one sample of a loaded machine.
                    for _ in range(calls[label]):
                        start = time.perf_counter()
                        res = jax.block_until_ready(fn(rtol))
                        best[label] = min(best[label], time.perf_counter() - start)
                    calls[label] = int(np.clip(0.1 / max(best[label], 1e-6), 1, 20))
                    out[label] = res
            for label in runners:
                y, steps, status = out[label]
                rows.append(dict(
                    problem=name, solver=label, rtol=rtol, time=best[label], steps=int(steps),
                    status=int(status), error=accuracy(y, ref, atol),
                    units=units(y, ref, rtol, atol),
                ))
                print(f"| {name} | {rtol:.0e} | {label} | {1e3 * best[label]:.1f} | "
                      f"{int(steps)} | {rows[-1]['error']:.2g} | {rows[-1]['units']:.2g} |"
                      + ("" if int(status) == 0 else f" status {int(status)}"), flush=True)
    return rows


def plot(rows, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    styles = {"jode Kvaerno5": ("C0", "o-"), "jode Rodas5": ("C1", "s-"),
              "diffrax Kvaerno5": ("C2", "^--"), "scipy Radau": ("C3", "v:"),
              "scipy BDF": ("C4", "d:")}
    fig, axes = plt.subplots(1, len(PROBLEMS), figsize=(5 * len(PROBLEMS), 4.2))
    for ax, name in zip(np.atleast_1d(axes), PROBLEMS):
        for label in SOLVERS:
            pts = [r for r in rows if r["problem"] == name and r["solver"] == label
                   and r["status"] == 0]
            if not pts:
                continue
            color, style = styles[label]
            ax.loglog([r["time"] for r in pts], [max(r["error"], 1e-17) for r in pts], style,
                      color=color, label=label, markersize=5)
        for r in rows:  # the requested rtol beside jode Kvaerno5's points
            if r["problem"] == name and r["solver"] == "jode Kvaerno5" and r["status"] == 0:
                ax.annotate(f"{r['rtol']:.0e}", (r["time"], max(r["error"], 1e-17)),
                            fontsize=7, xytext=(4, 2), textcoords="offset points")
        ax.set_title(name)
        ax.set_xlabel("wall time per solve (s, minimum over rounds)")
        ax.set_ylabel("relative error at t1, max |y - ref| / (atol + |ref|)")
        ax.grid(True, which="major", alpha=0.3)
    np.atleast_1d(axes)[0].legend(fontsize=8)
    fig.suptitle("Work-precision, rtol 1e-4 .. 1e-10 (labels: rtol of jode Kvaerno5)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"saved {path}")


def main(quick: bool, rounds: int | None = None):
    rtols = (1e-4, 1e-6, 1e-8) if quick else (1e-4, 1e-5, 1e-6, 1e-7, 1e-8, 1e-9, 1e-10)
    rounds = rounds or (1 if quick else 3)
    print(f"jax {jax.__version__}, diffrax {diffrax.__version__}, backend "
          f"{jax.default_backend()}, load {os.getloadavg()[0]:.1f}")
    print("| problem | rtol | solver | time (ms) | steps | relative error | "
          "error (tol units) |")
    print("|---|---|---|---|---|---|---|")
    rows = measure(rtols, rounds)
    print(f"load after: {os.getloadavg()[0]:.1f}")
    os.makedirs(os.path.join(HERE, "results"), exist_ok=True)
    plot(rows, os.path.join(HERE, "results", "work_precision.png"))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="rtol 1e-4, 1e-6, 1e-8 and one round")
    parser.add_argument("--rounds", type=int, default=None,
                        help="interleaved timing rounds (default 3, quick 1)")
    cli = parser.parse_args()
    main(cli.quick, cli.rounds)

"""Stiff solvers side by side: jode (Kvaerno3, Kvaerno5, Rodas5) vs diffrax Kvaerno5 vs scipy
Radau and BDF, on the Bari test-set problems ROBER (t = 1e11), VDPOL (μ = 1000, t ∈ [0, 2000])
and OREGO (t = 360), at rtol 1e-6 and 1e-8, in one process.

Reported per solve: steady-state wall time (median over repeats, after compilation), the
compile time (first call minus a steady call), steps (accepted + rejected), Jacobian
evaluations where the solver reports them, and the error at t1 against the published
reference in units of the requested tolerance, max_i |y_i - ref_i| / (atol + rtol |ref_i|).

    python benchmarks/stiff.py            # full: both tolerances, 7 repeats
    python benchmarks/stiff.py --quick    # rtol 1e-6 only, 3 repeats

scipy gets plain NumPy vector fields and computes its Jacobians by finite differences (its
default); jode and diffrax get the same jax.numpy function, jitted.
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax

import jode  # noqa: E402

jode.configure_cpu()  # one-kernel XLA:CPU solve loops: before any JAX computation

jax.config.update("jax_enable_x64", True)

import diffrax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from scipy.integrate import solve_ivp  # noqa: E402


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


def vdp_np(t, y, mu=1000.0):
    return np.array([y[1], mu * (1.0 - y[0] ** 2) * y[1] - y[0]])


def orego_np(t, y, p=(77.27, 8.375e-6, 0.161)):
    return np.array([
        p[0] * (y[1] + y[0] * (1.0 - p[1] * y[0] - y[1])),
        (y[2] - (1.0 + y[0]) * y[1]) / p[0],
        p[2] * (y[0] - y[2]),
    ])


# name: (jax f, numpy f, y0, args, t1, atol, reference at t1 — Bari test set, release 2.4)
PROBLEMS = {
    "ROBER t=1e11": (rober, rober_np, [1.0, 0.0, 0.0], [0.04, 3e7, 1e4], 1e11, 1e-14,
                     [0.2083340149701255e-07, 0.8333360770334713e-13, 0.9999999791665050]),
    "VDP mu=1000": (vdp, vdp_np, [2.0, 0.0], 1000.0, 2000.0, 1e-8,
                    [0.1706167732170483e01, -0.8928097010247975e00 / 1000.0]),
    "OREGO t=360": (orego, orego_np, [1.0, 2.0, 3.0], [77.27, 8.375e-6, 0.161], 360.0, 1e-8,
                    [0.1000814870318523e01, 0.1228178521549917e04, 0.1320554942846706e03]),
}


def units(y, ref, rtol, atol):
    y, ref = np.asarray(y), np.asarray(ref)
    return float(np.max(np.abs(y - ref) / (atol + rtol * np.abs(ref))))


def accuracy(y, ref, atol):
    """Tolerance-free error for equal-accuracy comparisons: max |y - ref| / (atol + |ref|)."""
    y, ref = np.asarray(y), np.asarray(ref)
    return float(np.max(np.abs(y - ref) / (atol + np.abs(ref))))


def _time(call, repeats):
    t = time.perf_counter()
    out = jax.block_until_ready(call())
    first = time.perf_counter() - t
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        out = jax.block_until_ready(call())
        times.append(time.perf_counter() - t)
    steady = statistics.median(times)
    return out, steady, max(first - steady, 0.0)


_JODE_CACHE = {}


def run_jode(solver, f, y0, args, t1, rtol, atol, repeats):
    # rtol is a traced argument: one compilation per (problem, solver) serves every
    # tolerance; the compile time is reported for the first tolerance only.
    key = (f, repr(solver))
    if key not in _JODE_CACHE:
        _JODE_CACHE[key] = jax.jit(lambda y0, args, rtol: jode.solve(
            f, y0, 0.0, t1, args, solver=solver, rtol=rtol, atol=atol, max_steps=50000
        ))
    fn = _JODE_CACHE[key]
    y0, args, rtol = jnp.asarray(y0), jnp.asarray(args), jnp.asarray(rtol)
    sol, steady, compile_s = _time(lambda: fn(y0, args, rtol), repeats)
    return dict(time=steady, compile=compile_s, y=np.asarray(sol.ys[-1]),
                steps=int(sol.stats["steps"]), njev=int(sol.stats["njev"]),
                status=int(sol.status))


def run_diffrax(f, y0, args, t1, rtol, atol, repeats):
    @jax.jit
    def fn(y0, args):
        return diffrax.diffeqsolve(
            diffrax.ODETerm(f), diffrax.Kvaerno5(), 0.0, t1, None, y0, args,
            stepsize_controller=diffrax.PIDController(rtol=rtol, atol=atol),
            max_steps=50000, throw=False,
        )

    y0, args = jnp.asarray(y0), jnp.asarray(args)
    sol, steady, compile_s = _time(lambda: fn(y0, args), repeats)
    return dict(time=steady, compile=compile_s, y=np.asarray(sol.ys[-1]),
                steps=int(sol.stats["num_steps"]), njev=None, status=int(sol.result._value))


def run_scipy(method, f_np, y0, t1, rtol, atol, repeats):
    def call():
        return solve_ivp(f_np, (0.0, t1), y0, method=method, rtol=rtol, atol=atol)

    sol, steady, _ = _time(call, max(1, repeats // 2))
    return dict(time=steady, compile=0.0, y=sol.y[:, -1], steps=int(sol.t.size - 1),
                njev=int(sol.njev), status=int(sol.status))


JODE_SOLVERS = (("jode Kvaerno3", jode.Kvaerno3()), ("jode Kvaerno5", jode.Kvaerno5()),
                ("jode Rodas5", jode.Rodas5()))


def equal_accuracy(name, f, y0, args, t1, atol, ref, diffrax_runs, repeats, extra_rtols):
    """For each diffrax run: jode's fastest run (any method, tolerance from the list) whose
    error is at most diffrax's, measured with `accuracy`."""
    runs = []
    for label, solver in JODE_SOLVERS[1:]:
        for rtol in extra_rtols:
            r = run_jode(solver, f, y0, args, t1, rtol, atol, repeats)
            if r["status"] == 0:
                runs.append((label, rtol, r["time"], accuracy(r["y"], ref, atol)))
    for dx_rtol, dx in diffrax_runs:
        dx_acc = accuracy(dx["y"], ref, atol)
        ok = [r for r in runs if r[3] <= dx_acc]
        if not ok:
            print(f"| {name} | diffrax rtol {dx_rtol:.0e}: error {dx_acc:.2g} | "
                  "none of jode's runs reached it | |")
            continue
        best = min(ok, key=lambda r: r[2])
        print(f"| {name} | diffrax rtol {dx_rtol:.0e}: {1e3 * dx['time']:.1f} ms, error "
              f"{dx_acc:.2g} | {best[0]} rtol {best[1]:.0e}: {1e3 * best[2]:.1f} ms, error "
              f"{best[3]:.2g} | {best[2] / dx['time']:.2g}x |", flush=True)


def main(quick: bool):
    rtols = (1e-6,) if quick else (1e-6, 1e-8)
    repeats = 3 if quick else 7
    extra_rtols = (1e-6, 1e-7, 1e-8) if quick else (1e-6, 1e-7, 1e-8, 1e-9, 1e-10)
    diffrax_runs = {}
    print(f"jax {jax.__version__}, diffrax {diffrax.__version__}, backend {jax.default_backend()}")
    header = ("| problem | rtol | solver | time (ms) | compile (s) | steps | njev | "
              "error (tol units) | vs diffrax Kvaerno5 | vs scipy Radau |")
    print(header)
    print("|" + "---|" * 10)
    for name, (f, f_np, y0, args, t1, atol, ref) in PROBLEMS.items():
        for rtol in rtols:
            rows = {}
            for label, solver in JODE_SOLVERS:
                rows[label] = run_jode(solver, f, y0, args, t1, rtol, atol, repeats)
            rows["diffrax Kvaerno5"] = run_diffrax(f, y0, args, t1, rtol, atol, repeats)
            diffrax_runs.setdefault(name, []).append((rtol, rows["diffrax Kvaerno5"]))
            for method in ("Radau", "BDF"):
                rows[f"scipy {method}"] = run_scipy(method, f_np, y0, t1, rtol, atol, repeats)
            base_dx = rows["diffrax Kvaerno5"]["time"]
            base_radau = rows["scipy Radau"]["time"]
            for label, r in rows.items():
                err = units(r["y"], ref, rtol, atol)
                njev = "n/a" if r["njev"] is None else r["njev"]
                fail = "" if r["status"] == 0 else f" (status {r['status']})"
                print(f"| {name} | {rtol:.0e} | {label}{fail} | {1e3 * r['time']:.2f} | "
                      f"{r['compile']:.1f} | {r['steps']} | {njev} | {err:.2g} | "
                      f"{r['time'] / base_dx:.2g}x | {r['time'] / base_radau:.2g}x |",
                      flush=True)
    print("\nEqual accuracy: error = max_i |y_i - ref_i| / (atol + |ref_i|); jode runs at rtol "
          + ", ".join(f"{r:.0e}" for r in extra_rtols))
    print("| problem | diffrax Kvaerno5 | fastest jode run at equal or better error | ratio |")
    print("|---|---|---|---|")
    for name, (f, _, y0, args, t1, atol, ref) in PROBLEMS.items():
        equal_accuracy(name, f, y0, args, t1, atol, ref, diffrax_runs[name], repeats,
                       extra_rtols)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="rtol 1e-6 only, 3 repeats")
    main(parser.parse_args().quick)

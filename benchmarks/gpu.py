"""Ensembles on a GPU: the ensemble kernel vs jode's vmap path vs diffrax's vmap, and a floor.

    python benchmarks/gpu.py            # on a GPU: B = 1e3, 1e4, 1e5, 1e6 (< 5 minutes on an H200)
    python benchmarks/gpu.py --quick    # small B; on CPU this is all it runs

Problems (Tsit5, rtol = atol = 1e-6, per-lane parameters, seed 0):
- Lotka-Volterra, y0 = (1, 1), t in [0, 10], (1.5, 1, 3, 1) * U(0.8, 1.2);
- Lorenz, y0 = (1, 0, 0), t in [0, 1], (10, rho, 8/3) with rho ~ U(0, 21), the ensemble of
  DiffEqGPU's benchmarks (Utkarsh et al. 2024, CMAME 116591, §5).
Each in float32 and float64, saving 101 times or t1 only. Methods, called in turn in one
process (minimum over repeats, after a compiling call):
- kernel: `jode.solve_batch(..., kernel=True)`, one Pallas kernel for the ensemble
  (jode/ode/ensemble_kernel.py), each program stepping a block of lanes;
- vmap: `jode.solve_batch(...)`, the select-free vmapped loop;
- diffrax: `jax.vmap(diffrax.diffeqsolve)`.
The floor is max(bytes / copy bandwidth, flops / matmul rate): the bytes every method must
move (parameters and initial states in, saves and statistics out) over the measured
bandwidth of a device copy, and the arithmetic of every lane's own steps (flops of one step
counted from its jaxpr, times the lane's step count, plus the saves' interpolation) over
the measured rate of a large matrix product. No solver can beat it.
Correctness beside the timings: four lanes of the kernel against `jode.solve` run alone
(step counts, and the largest difference over the largest value), and the number of lanes
whose step counts differ from the vmap path's.

The sweep over B is run for Lotka-Volterra, float32, 101 saves; the other seven
combinations at one size (1e5 on a GPU). A time budget (--budget seconds, default 240)
skips the cases left when it runs out, saying so. A method that fails (a kernel that does
not lower on this backend) is reported in its cell and the rest go on.

On CPU the kernel runs in Pallas interpret mode (an emulation, not a speed figure): only the
quick sizes run, and the kernel only up to --cpu-kernel-max lanes.
"""

from __future__ import annotations

import argparse
import os
import time

import jax

import jode  # noqa: E402

jode.configure_cpu()  # one-kernel XLA:CPU solve loops (a no-op elsewhere): before any JAX work
import jax.numpy as jnp
import numpy as np

jax.config.update("jax_enable_x64", True)

import diffrax  # noqa: E402

from jode.models import lorenz, lotka_volterra  # noqa: E402
from jode.ode.control import PIDController, pid_update, scaled_error  # noqa: E402
from jode.ode.interpolation import horner  # noqa: E402

TOL = 1e-6
N_SAVE = 101
PROBLEMS = {
    # name: (f, y0, t1, parameters(B, rng) -> (B, k))
    "LV": (
        lotka_volterra,
        np.array([1.0, 1.0]),
        10.0,
        lambda b, rng: np.array([1.5, 1.0, 3.0, 1.0]) * rng.uniform(0.8, 1.2, size=(b, 4)),
    ),
    "Lorenz": (
        lorenz,
        np.array([1.0, 0.0, 0.0]),
        1.0,
        lambda b, rng: np.stack(
            [np.full(b, 10.0), rng.uniform(0.0, 21.0, size=b), np.full(b, 8.0 / 3.0)], axis=1
        ),
    ),
}
ARITH = {
    "add", "sub", "mul", "div", "neg", "exp", "log", "sqrt", "rsqrt", "pow", "integer_pow",
    "max", "min", "abs", "sign", "select_n", "square", "exp2", "log1p", "expm1", "tanh",
    "sin", "cos", "reduce_sum", "reduce_max", "reduce_min", "dot_general",
}


def count_flops(fn, *args):
    """Arithmetic operations in the jaxpr of fn(*args): elements produced (for a reduction
    or product, elements consumed), counted through nested jaxprs once."""
    total = 0

    def walk(jaxpr):
        nonlocal total
        for eqn in jaxpr.eqns:
            name = eqn.primitive.name
            for p in eqn.params.values():
                if hasattr(p, "jaxpr") and hasattr(p.jaxpr, "eqns"):
                    walk(p.jaxpr)
                elif hasattr(p, "eqns"):
                    walk(p)
            if name in ARITH:
                if name.startswith("reduce") or name == "dot_general":
                    total += sum(int(np.prod(v.aval.shape)) for v in eqn.invars)
                else:
                    total += sum(int(np.prod(v.aval.shape)) for v in eqn.outvars)

    walk(jax.make_jaxpr(fn)(*args).jaxpr)
    return total


def flops_per_step(f, y0, p, solver):
    """Arithmetic of one adaptive step of one lane: the stages, error norm and controller."""
    ctrl = PIDController()

    def step(y, p):
        res = solver.step(lambda t, y: f(t, y, p), jnp.zeros((), y.dtype), y, f(0.0, y, p),
                          jnp.full((), 1e-3, y.dtype))
        err = scaled_error(res.error, y, res.y1, TOL, TOL)
        return pid_update(ctrl, solver.error_order, err, jnp.ones((), y.dtype),
                          jnp.ones((2,), y.dtype)), res.coeffs

    coeffs = jax.eval_shape(step, y0, p)[1]
    per_save = count_flops(lambda c, th: horner(c, th), jnp.zeros(coeffs.shape, y0.dtype),
                           jnp.zeros((), y0.dtype))
    return count_flops(step, y0, p), per_save


def min_time(fn, *args, repeats):
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        best = min(best, time.perf_counter() - start)
    return best


def measure_rates(dtype, big):
    """(copy bandwidth in bytes/s, matrix-product rate in flop/s) of the default device."""
    n_el = (1 << 26) if big else (1 << 22)
    x = jnp.ones((n_el,), dtype)
    copy = jax.jit(lambda x: -x)
    jax.block_until_ready(copy(x))
    bw = 2 * x.nbytes / min_time(copy, x, repeats=10)
    m = 4096 if big else 512
    a = jnp.ones((m, m), dtype) / m
    mm = jax.jit(lambda a: jnp.matmul(a, a, precision=jax.lax.Precision.HIGHEST))
    jax.block_until_ready(mm(a))
    rate = 2 * m**3 / min_time(mm, a, repeats=10)
    return bw, rate


def make_methods(name, dtype, save_ts, block=None):
    f, _, t1, _ = PROBLEMS[name]
    ts = jnp.linspace(0.0, t1, N_SAVE, dtype=dtype) if save_ts else None
    kw = dict(solver=jode.Tsit5(), rtol=TOL, atol=TOL, saveat=ts, max_steps=4096, throw=False)

    def kernel(y0, p):
        sol = jode.solve_batch(f, y0, 0.0, t1, p, kernel=True, block=block, **kw)
        return sol.ys, sol.stats["steps"], sol.status

    def vmap(y0, p):
        sol = jode.solve_batch(f, y0, 0.0, t1, p, **kw)
        return sol.ys, sol.stats["steps"], sol.status

    def dfx(y0, p):
        saveat = diffrax.SaveAt(ts=ts) if save_ts else diffrax.SaveAt(t1=True)

        def one(y0, p):
            sol = diffrax.diffeqsolve(
                diffrax.ODETerm(f), diffrax.Tsit5(), 0.0, t1, None, y0, p, saveat=saveat,
                stepsize_controller=diffrax.PIDController(rtol=TOL, atol=TOL), max_steps=4096,
                throw=False,
            )
            return sol.ys, sol.stats["num_steps"], sol.result._value

        return jax.vmap(one)(y0, p)

    return {"kernel": jax.jit(kernel), "vmap": jax.jit(vmap), "diffrax": jax.jit(dfx)}


def run_case(name, dtype, save_ts, b, rates, run_kernel, repeats, block=None):
    f, y0_1, t1, params = PROBLEMS[name]
    rng = np.random.default_rng(0)
    p = jnp.asarray(params(b, rng), dtype)
    y0 = jnp.asarray(np.broadcast_to(y0_1, (b, y0_1.size)), dtype)
    methods = make_methods(name, dtype, save_ts, block)
    if not run_kernel:
        methods.pop("kernel")
    outs, compile_s, failed = {}, {}, {}
    for k, fn in methods.items():  # compile (first call) each method
        start = time.perf_counter()
        try:
            outs[k] = jax.block_until_ready(fn(y0, p))
            compile_s[k] = time.perf_counter() - start
        except Exception as exc:  # report and go on (e.g. a kernel this backend cannot lower)
            failed[k] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:80]}"
    live = {k: fn for k, fn in methods.items() if k in outs}
    best = {k: float("inf") for k in live}
    for _ in range(repeats):  # interleaved: each method in turn under the same load
        for k, fn in live.items():
            start = time.perf_counter()
            jax.block_until_ready(fn(y0, p))
            best[k] = min(best[k], time.perf_counter() - start)
    # The floor, from jode's per-lane step counts (the vmap path's, identical to the kernel's).
    steps = np.asarray(outs["vmap"][1]) if "vmap" in outs else None
    step_flops, save_flops = flops_per_step(f, y0[0], p[0], jode.Tsit5())
    itemsize = jnp.dtype(dtype).itemsize
    n, k = y0.shape[1], p.shape[1]
    n_out = N_SAVE if save_ts else 1
    nbytes = b * ((n + k) * itemsize + n_out * n * itemsize + 5 * 4)
    flops = (0 if steps is None else float(steps.sum()) * step_flops) + b * n_out * save_flops
    bw, rate = rates
    floor = max(nbytes / bw, flops / rate)
    check = ""
    if "kernel" in outs:
        # Lanes of the kernel against jode.solve run alone on them (the kernel's promise:
        # the same steps), and against the vmap path (which in float32 can round its way to
        # other accept/reject decisions than the solve alone).
        ys_k, steps_k, _ = (np.asarray(x) for x in outs["kernel"])
        ts = jnp.linspace(0.0, t1, N_SAVE, dtype=dtype) if save_ts else None
        alone = jax.jit(lambda y0, p: jode.solve(f, y0, 0.0, t1, p, rtol=TOL, atol=TOL,
                                                 saveat=ts, throw=False))
        lanes = np.linspace(0, b - 1, 4).astype(int)
        same = 0
        scale_err = 0.0
        for i in lanes:
            sol = alone(y0[i], p[i])
            same += int(sol.stats["steps"]) == int(steps_k[i])
            ref = np.asarray(sol.ys)
            scale_err = max(scale_err, np.max(np.abs(ys_k[i] - ref)) / np.max(np.abs(ref)))
        check = f"alone: {same}/{len(lanes)} same steps, {scale_err:.0e}"
        if "vmap" in outs:
            differ = int(np.sum(steps_k != np.asarray(outs["vmap"][1])))
            check += f"; vmap: {differ} lanes differ in steps"
    return dict(best=best, compile=compile_s, failed=failed, floor=floor, bytes=nbytes,
                flops=flops, bw=bw, rate=rate, check=check,
                steps=None if steps is None else (int(steps.max()), float(steps.mean())))


def fmt_row(name, dtype, save_ts, b, r):
    def cell(k):
        if k in r["failed"]:
            return f"failed ({r['failed'][k]})"
        if k not in r["best"]:
            return "skipped"
        return f"{r['best'][k] * 1e3:.3g} ms"

    ratio = ""
    if "kernel" in r["best"] and "vmap" in r["best"]:
        ratio = f"{r['best']['vmap'] / r['best']['kernel']:.2g}x"
    steps = "" if r["steps"] is None else f"{r['steps'][0]}/{r['steps'][1]:.0f}"
    comp = "/".join(f"{r['compile'].get(k, float('nan')):.1f}" for k in ("kernel", "vmap",
                                                                         "diffrax"))
    return (
        f"| {name} | {jnp.dtype(dtype).name} | {N_SAVE if save_ts else 't1'} | {b:.0e} | "
        f"{cell('kernel')} | {cell('vmap')} | {cell('diffrax')} | {r['floor'] * 1e3:.3g} ms | "
        f"{ratio} | {steps} | {r['check']} | {comp} |"
    )


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="small B only")
    parser.add_argument("--budget", type=float, default=240.0, help="seconds for all cases")
    parser.add_argument("--cpu-kernel-max", type=int, default=64,
                        help="on CPU, run the interpret-mode kernel up to this many lanes")
    parser.add_argument("--block", type=int, default=None,
                        help="kernel lanes per program (default: the kernel's, 128)")
    ns = parser.parse_args()
    backend = jax.default_backend()
    on_accel = backend in ("gpu", "cuda", "rocm", "tpu")
    quick = ns.quick or not on_accel
    if quick:
        sweep = [64, 1000] if not on_accel else [1000, 10_000]
        other_b = 64 if not on_accel else 1000
    else:
        sweep, other_b = [1000, 10_000, 100_000, 1_000_000], 100_000
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    print(f"jax {jax.__version__}, diffrax {diffrax.__version__}, backend {backend}, "
          f"devices {jax.devices()}, load average {load}")
    if not on_accel:
        print(f"No GPU/TPU: the kernel runs in Pallas interpret mode (not a speed figure), "
              f"only up to {ns.cpu_kernel_max} lanes.")
    cases = [("LV", jnp.float32, True, b) for b in sweep]
    for name in ("LV", "Lorenz"):
        for dtype in (jnp.float32, jnp.float64):
            for save_ts in (True, False):
                if not (name == "LV" and dtype == jnp.float32 and save_ts):
                    cases.append((name, dtype, save_ts, other_b))
    rates = {}
    print("\n| problem | dtype | saves | B | kernel | jode vmap | diffrax vmap | floor | "
          "vmap/kernel | steps max/mean | kernel steps vs alone, vs vmap | "
          "compile s (kernel/vmap/diffrax) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    start = time.perf_counter()
    skipped = []
    for name, dtype, save_ts, b in cases:
        if time.perf_counter() - start > ns.budget:
            skipped.append((name, jnp.dtype(dtype).name, N_SAVE if save_ts else "t1", b))
            continue
        if dtype not in rates:
            rates[dtype] = measure_rates(dtype, big=on_accel)
        run_kernel = on_accel or b <= ns.cpu_kernel_max
        repeats = 3 if b >= 100_000 else 5
        r = run_case(name, dtype, save_ts, b, rates[dtype], run_kernel, repeats, ns.block)
        print(fmt_row(name, dtype, save_ts, b, r), flush=True)
    for dtype, (bw, rate) in rates.items():
        print(f"\n{jnp.dtype(dtype).name}: copy bandwidth {bw / 1e9:.3g} GB/s, matmul rate "
              f"{rate / 1e9:.3g} GFLOP/s (the floor's denominators)")
    if skipped:
        print(f"\nSkipped (time budget of {ns.budget:.0f} s spent): {skipped}")
    print(f"\nTotal {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()

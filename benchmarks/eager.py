"""The notebook path: eager calls of jode's entry points beside diffrax and optimistix.

    python benchmarks/eager.py            # 30 repeats
    python benchmarks/eager.py --quick    # 10 repeats

An eager call is what a notebook cell runs: `jode.solve(...)` with no `jax.jit` around it.
For each case: the first call (trace + compile + run, in a fresh process it includes
JAX's own warm-up, so the first row of each library pays it) and the repeat call (the
minimum over repeats, the calls of the compared libraries interleaved under the same load).
Then the forms users write, each repeated eagerly beside the array-argument form: a
captured y0, Python floats for t0/t1/args, the default solver, tuple args; and the same
forms under `jax.jit`. Float64 throughout, Lotka-Volterra, Tsit5, 101 saves.
Run against another checkout with PYTHONPATH=that/checkout to compare versions.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

jax.config.update("jax_enable_x64", True)

import diffrax  # noqa: E402
import optimistix as optx  # noqa: E402

import jode  # noqa: E402

jode.configure_cpu()


def lotka_volterra(t, y, p):
    a, b, c, d = p
    return jnp.stack([a * y[0] - b * y[0] * y[1], d * y[0] * y[1] - c * y[1]])


def lotka_volterra_list(t, y, p):
    """The same field on a list state [prey, predator] with a tuple of parameters."""
    a, b, c, d = p
    return [a * y[0] - b * y[0] * y[1], d * y[0] * y[1] - c * y[1]]


def lotka_volterra_closed(t, y, args):
    """The same field with its parameters captured (a closure defined once)."""
    return lotka_volterra(t, y, P)


Y0 = jnp.array([1.0, 1.0])
P = jnp.array([1.5, 1.0, 3.0, 1.0])
TS = jnp.linspace(0.0, 10.0, 101)
TOL = 1e-6


def block(out):
    return jax.block_until_ready(out)


def first_call(fn):
    start = time.perf_counter()
    block(fn())
    return time.perf_counter() - start


def interleaved(fns, repeats):
    """Minimum seconds of each function, called in turn (the same load for each)."""
    best = [float("inf")] * len(fns)
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            start = time.perf_counter()
            block(fn())
            best[i] = min(best[i], time.perf_counter() - start)
    return best


def fmt(seconds):
    return f"{seconds * 1e3:.3f} ms" if seconds < 1 else f"{seconds:.2f} s"


def jode_lv():
    return jode.solve(lotka_volterra, Y0, 0.0, 10.0, P, solver=jode.Tsit5(), rtol=TOL,
                      atol=TOL, saveat=TS).ys


def diffrax_lv():
    return diffrax.diffeqsolve(
        diffrax.ODETerm(lotka_volterra), diffrax.Tsit5(), 0.0, 10.0, None, Y0, args=P,
        saveat=diffrax.SaveAt(ts=TS),
        stepsize_controller=diffrax.PIDController(rtol=TOL, atol=TOL),
    ).ys


def cos_map(z, args):
    return jnp.cos(z)


Z0 = jnp.asarray(-1.0)


def jode_fixed_point():
    return jode.fixed_point(cos_map, Z0, solver=jode.FixedPointIteration(), rtol=0.0,
                            atol=1e-10, max_steps=256).value


def jode_fixed_point_default():
    return jode.fixed_point(cos_map, Z0, rtol=0.0, atol=1e-10).value


def optx_fixed_point():
    return optx.fixed_point(cos_map, optx.FixedPointIteration(rtol=0.0, atol=1e-10), Z0,
                            max_steps=256).value


def decay(t, y, lam):
    return -lam * y


def jode_fractional():
    return jode.solve_fractional(decay, jnp.array([1.0]), 0.0, 5.0, jnp.asarray(2.0),
                                 alpha=0.7, n_steps=1000).ys


def case_rows(repeats):
    rows = []
    for name, fns in (
        ("LV solve (Tsit5, 101 saves)", (jode_lv, diffrax_lv)),
        ("fixed point cos z = z (plain iteration)", (jode_fixed_point, optx_fixed_point)),
        ("fixed point cos z = z (jode default: Anderson)", (jode_fixed_point_default, None)),
        ("solve_fractional (abm, N = 1000)", (jode_fractional, None)),
    ):
        live = [fn for fn in fns if fn is not None]
        firsts = [first_call(fn) for fn in live]
        repeat = interleaved(live, repeats)
        if len(live) == 2:
            rows.append((name, firsts[0], firsts[1], repeat[0], repeat[1]))
        else:
            rows.append((name, firsts[0], None, repeat[0], None))
    return rows


def form_fns():
    """The forms users write, eager; each returns the final state."""
    p_tuple = (1.5, 1.0, 3.0, 1.0)
    y0_np = np.array([1.0, 1.0])

    def captured_params():
        return jode.solve(lotka_volterra_closed, Y0, 0.0, 10.0, saveat=TS).ys

    def arrays():
        return jode.solve(lotka_volterra, Y0, jnp.asarray(0.0), jnp.asarray(10.0), P,
                          solver=jode.Tsit5(), saveat=TS).ys

    def python_floats():
        return jnp.stack(jode.solve(lotka_volterra_list, [1.0, 1.0], 0.0, 10.0, p_tuple,
                                    saveat=TS).ys, axis=-1)

    def default_solver():
        return jode.solve(lotka_volterra, Y0, 0.0, 10.0, P, saveat=TS).ys

    def numpy_inputs():
        return jode.solve(lotka_volterra, y0_np, 0.0, 10.0, np.asarray(P),
                          saveat=np.asarray(TS)).ys

    return {
        "array arguments (jnp t0/t1)": arrays,
        "Python floats t0/t1, tuple of floats args, list y0": python_floats,
        "default solver": default_solver,
        "NumPy y0/args/saveat": numpy_inputs,
        "parameters captured by f, args=None": captured_params,
    }


def jit_forms():
    """Under jax.jit: y0 an argument vs y0 captured as a constant."""
    y0_const = Y0

    def as_argument(y0, p):
        return jode.solve(lotka_volterra, y0, 0.0, 10.0, p, saveat=TS).ys

    def captured(p):
        return jode.solve(lotka_volterra, y0_const, 0.0, 10.0, p, saveat=TS).ys

    def dfx_argument(y0, p):
        return diffrax.diffeqsolve(
            diffrax.ODETerm(lotka_volterra), diffrax.Tsit5(), 0.0, 10.0, None, y0, args=p,
            saveat=diffrax.SaveAt(ts=TS),
            stepsize_controller=diffrax.PIDController(rtol=TOL, atol=TOL),
        ).ys

    def dfx_captured(p):
        return dfx_argument(y0_const, p)

    jitted = {
        "jode, y0 an argument": (jax.jit(as_argument), (Y0, P)),
        "jode, y0 captured": (jax.jit(captured), (P,)),
        "diffrax, y0 an argument": (jax.jit(dfx_argument), (Y0, P)),
        "diffrax, y0 captured": (jax.jit(dfx_captured), (P,)),
    }
    return {k: (lambda fn=fn, a=a: fn(*a)) for k, (fn, a) in jitted.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    ns = parser.parse_args()
    repeats = 10 if ns.quick else 30
    print(f"jax {jax.__version__}, diffrax {diffrax.__version__}, "
          f"optimistix {optx.__version__}, {repeats} repeats\n")
    print("## Eager calls: first and repeat (minimum, interleaved)\n")
    print("| case | first jode | first other | repeat jode | repeat other | repeat ratio |")
    print("|---|---|---|---|---|---|")
    for name, f_j, f_o, r_j, r_o in case_rows(repeats):
        other = (fmt(f_o), fmt(r_o), f"{r_j / r_o:.2f}") if f_o is not None else ("-",) * 3
        print(f"| {name} | {fmt(f_j)} | {other[0]} | {fmt(r_j)} | {other[1]} | {other[2]} |")

    print("\n## Forms users write: repeat eager call (minimum, interleaved)\n")
    forms = form_fns()
    firsts = {k: first_call(fn) for k, fn in forms.items()}
    best = interleaved(list(forms.values()), repeats)
    ref = np.asarray(forms["array arguments (jnp t0/t1)"]())
    print("| form | first call | repeat call | same ys |")
    print("|---|---|---|---|")
    for (name, fn), b in zip(forms.items(), best, strict=True):
        same = np.allclose(np.asarray(fn()), ref, rtol=1e-12, atol=0)
        print(f"| {name} | {fmt(firsts[name])} | {fmt(b)} | {same} |")

    print("\n## Under jax.jit: y0 an argument vs captured (minimum, interleaved)\n")
    forms = jit_forms()
    for fn in forms.values():
        block(fn())
    best = interleaved(list(forms.values()), repeats * 10)
    print("| form | run |")
    print("|---|---|")
    for name, b in zip(forms, best, strict=True):
        print(f"| {name} | {b * 1e6:.1f} us |")


if __name__ == "__main__":
    main()

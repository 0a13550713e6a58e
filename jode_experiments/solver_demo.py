"""Solver demo: Lorenz and Lotka-Volterra with jode and diffrax side by side."""

from __future__ import annotations

import time
from pathlib import Path

#: Small sequential steps, launch-bound on a GPU: `jode reproduce --device auto` runs
#: this target on the host CPU.
DEVICE = "cpu"

NAME = "solver"


def _reference(f, y0, ts, args):
    """scipy DOP853 at rtol=atol=1e-13, the yardstick for accuracy.

    The vector field is compiled once (`jax.jit`): DOP853 calls it thousands of times, and
    op-by-op evaluation of a JAX function costs a dispatch per operation per call.
    """
    import jax
    import numpy as np
    from scipy.integrate import solve_ivp

    f_jit = jax.jit(f)
    sol = solve_ivp(
        lambda t, y: np.asarray(f_jit(t, y, args)),
        (ts[0], ts[-1]),
        np.asarray(y0),
        method="DOP853",
        t_eval=np.asarray(ts),
        rtol=1e-13,
        atol=1e-13,
    )
    return sol.y.T


def run(out_dir: Path, quick: bool) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np

    jax.config.update("jax_enable_x64", True)
    import jode
    from jode.models import lorenz, lotka_volterra
    problems = {
        "lotka_volterra": (lotka_volterra, [1.0, 1.0], [1.5, 1.0, 3.0, 1.0]),
        "lorenz": (lorenz, [1.0, 0.0, 0.0], [10.0, 28.0, 8.0 / 3.0]),
    }
    ts = jnp.linspace(0.0, 10.0, 1001 if not quick else 401)
    metrics, curves = {}, {}
    for name, (f, y0, p) in problems.items():
        y0, p = jnp.asarray(y0), jnp.asarray(p)
        ref = _reference(f, y0, np.asarray(ts), p)
        for backend in ("jode", "diffrax"):
            run_solve = jax.jit(
                lambda y0, p, backend=backend, f=f: jode.solve(
                    f, y0, 0.0, 10.0, p, saveat=ts, rtol=1e-8, atol=1e-8, backend=backend
                )
            )
            start = time.perf_counter()
            sol = jax.block_until_ready(run_solve(y0, p))
            compile_s = time.perf_counter() - start
            # One run is noisy on a shared machine: the minimum over repeats (after the
            # compiling call) is the cost of the solve itself.
            run_times = []
            for _ in range(TIMING_REPEATS_QUICK if quick else TIMING_REPEATS):
                start = time.perf_counter()
                sol = jax.block_until_ready(run_solve(y0, p))
                run_times.append(time.perf_counter() - start)
            run_s = min(run_times)
            err = float(np.max(np.abs(np.asarray(sol.ys) - ref)))
            metrics[f"{name}/{backend}"] = dict(
                steps=int(sol.stats["steps"]),
                nfev=int(sol.stats["nfev"]),
                max_abs_error_vs_dop853=err,
                first_call_s=compile_s,
                run_s=run_s,
                run_s_median=float(np.median(run_times)),
                timing_repeats=len(run_times),
                status=int(sol.status),
            )
            if backend == "jode":
                curves[name] = np.asarray(sol.ys)
    # The attractor needs a long run: up to t = 10 from (1, 0, 0) the orbit has visited one
    # lobe only. (The accuracy above is measured on [0, 10]: later, chaos amplifies any
    # tolerance into an O(1) difference from the reference.)
    t_long = jnp.linspace(0.0, LORENZ_T1, 100 * int(LORENZ_T1) + 1)  # smooth at dt = 0.01
    f, y0, p = problems["lorenz"]
    long = jax.jit(lambda y0, p: jode.solve(f, y0, 0.0, LORENZ_T1, p, saveat=t_long,
                                            rtol=1e-8, atol=1e-8, max_steps=200_000))
    lz = np.asarray(long(jnp.asarray(y0), jnp.asarray(p)).ys)
    keep = np.asarray(t_long) >= LORENZ_TRANSIENT
    phase_portraits_figure(curves["lotka_volterra"], lz[keep], out_dir, quick)
    metrics["lorenz_portrait"] = dict(t1=LORENZ_T1, transient_dropped=LORENZ_TRANSIENT,
                                      lobes_visited=int(np.any(lz[keep, 0] > 0))
                                      + int(np.any(lz[keep, 0] < 0)))
    metrics["bouncing_ball"] = bouncing_ball(out_dir, quick)
    return metrics


#: Repeats of each timed solve (after the compiling call); the minimum is reported.
TIMING_REPEATS, TIMING_REPEATS_QUICK = 7, 3
#: The Lorenz phase portrait: integrate to LORENZ_T1, plot from LORENZ_TRANSIENT on.
LORENZ_T1, LORENZ_TRANSIENT = 60.0, 5.0


def phase_portraits_figure(lv, lz, out_dir: Path, quick: bool = False):
    """Lotka-Volterra's closed orbit (prey, predator) and the Lorenz attractor (x, z)."""
    from jode_experiments.plot import pyplot, savefig

    fig, axes = pyplot().subplots(1, 2, figsize=(10, 4.2))
    axes[0].plot(lv[:, 0], lv[:, 1], lw=1.2, label="orbit from (1, 1), t ∈ [0, 10]")
    axes[0].set(xlabel="prey x (model units)", ylabel="predator y (model units)",
                title="Lotka-Volterra phase portrait")
    axes[1].plot(lz[:, 0], lz[:, 2], lw=0.4,
                 label=f"orbit from (1, 0, 0), t ∈ [{LORENZ_TRANSIENT:g}, {LORENZ_T1:g}]")
    axes[1].set(xlabel="x (model units)", ylabel="z (model units)",
                title="Lorenz attractor (x-z projection)")
    for ax in axes:
        ax.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    savefig(fig, out_dir / "phase_portraits.png", quick)


#: The bouncing ball: gravity (m/s^2), drop height (m), restitution, bounces followed.
BALL_G, BALL_H, BALL_E, BALL_BOUNCES = 9.81, 2.0, 0.8, 5


def bouncing_ball(out_dir: Path, quick: bool = False) -> dict:
    """A ball dropped from BALL_H bounces on the ground: a terminal `jode.Event` per flight.

    Each solve ends where the height crosses zero downwards (`jode.Event(..., direction=-1)`);
    the next starts there with the velocity reflected and scaled by the restitution e. The
    k-th bounce (k = 0, 1, ...) happens at t_k = sqrt(2h/g) (1 + 2 Σ_{j=1..k} e^j), and the
    first bounce time's derivative with respect to the height is 1 / sqrt(2 g h).

    Returns:
        Metrics: the bounce times, their errors against the closed form, the gradient of the
        first bounce time with respect to h against the closed form, and diffrax's first
        bounce time; writes bouncing_ball.png.
    """
    import jax
    import jax.numpy as jnp
    import numpy as np

    jax.config.update("jax_enable_x64", True)
    import jode
    from jode_experiments.plot import pyplot, savefig

    def fall(t, y, g):
        return jnp.stack([y[1], -g * jnp.ones_like(y[1])])

    ground = jode.Event(lambda t, y, g: y[0], direction=-1)
    tol = 1e-10

    @jax.jit
    def flight(t0, y0):
        # One compiled program per flight: the solve and its dense output on 200 times.
        sol = jode.solve(fall, y0, t0, t0 + 100.0, BALL_G, event=ground, rtol=tol, atol=tol,
                         dense=True)
        tt = jnp.linspace(t0, sol.event_t, 200)
        return sol.event_t, sol.event_y, tt, sol.evaluate(tt)[:, 0]

    t0, y0 = jnp.zeros(()), jnp.array([BALL_H, 0.0])
    times, arcs = [], []
    for _ in range(BALL_BOUNCES):
        t_hit, y_hit, tt, height = flight(t0, y0)
        arcs.append((np.asarray(tt), np.asarray(height)))
        times.append(float(t_hit))
        t0, y0 = t_hit, jnp.stack([jnp.zeros(()), -BALL_E * y_hit[1]])
    fall_time = np.sqrt(2 * BALL_H / BALL_G)
    exact = [fall_time * (1 + 2 * sum(BALL_E**j for j in range(1, k + 1)))
             for k in range(BALL_BOUNCES)]
    errors = [abs(t - x) for t, x in zip(times, exact, strict=True)]

    def first_bounce(h, backend="jode"):
        y0 = jnp.stack([h, jnp.zeros(())])
        return jode.solve(fall, y0, 0.0, 100.0, BALL_G, event=ground, rtol=tol, atol=tol,
                          backend=backend).event_t

    # Compiled, not op by op: an eager gradient through the solve dispatches every
    # operation of the step loop's trace separately and costs several times the compile.
    grad = float(jax.jit(jax.grad(first_bounce))(jnp.asarray(BALL_H)))
    grad_exact = 1 / np.sqrt(2 * BALL_G * BALL_H)
    t_dfx = float(jax.jit(lambda h: first_bounce(h, backend="diffrax"))(jnp.asarray(BALL_H)))

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 3.6))
    for k, (tt, xx) in enumerate(arcs):
        ax.plot(tt, xx, color="C0", lw=1.4, label="height, jode Tsit5 dense output" if k == 0
                else None)
    ax.plot(times, np.zeros(len(times)), "o", color="C3", ms=5,
            label="bounces located by jode.Event")
    for k, x in enumerate(exact):
        ax.axvline(x, color="0.5", ls=":", lw=0.8,
                   label="closed form $t_k$" if k == 0 else None)
    ax.set(xlabel="time t (s)", ylabel="height above ground (m)",
           title=f"Bouncing ball: h = {BALL_H:g} m, g = {BALL_G:g} m/s², e = {BALL_E:g}; "
           f"max |t_k - closed form| = {max(errors):.1e} s")
    ax.title.set_fontsize(9)
    ax.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    savefig(fig, out_dir / "bouncing_ball.png", quick)
    return dict(
        g_m_per_s2=BALL_G,
        height_m=BALL_H,
        restitution=BALL_E,
        rtol=tol,
        atol=tol,
        bounce_times_s=times,
        bounce_times_closed_form_s=exact,
        bounce_time_abs_errors_s=errors,
        max_bounce_time_abs_error_s=max(errors),
        d_first_bounce_d_height=grad,
        d_first_bounce_d_height_closed_form=grad_exact,
        d_first_bounce_d_height_rel_error=abs(grad - grad_exact) / grad_exact,
        diffrax_first_bounce_s=t_dfx,
        diffrax_first_bounce_abs_error_s=abs(t_dfx - fall_time),
    )

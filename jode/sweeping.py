"""Batched and device-sharded sweeps: evaluate (or fit) over a grid or batch of parameters.

`sweep(fn, batch)` computes `[fn(x) for x in batch]` as one SPMD program: the batch (a pytree
with a leading axis) is padded to a multiple of the device count, split over a 1-D
`jax.sharding.Mesh` of the devices with `jax.shard_map`, and each device runs `fn` with
`vmap` over chunks of `chunk_size` elements at a time (`lax.map(..., batch_size=...)`), so the
memory in use is bounded by the chunk, not by the batch. Across hosts (after
`jax.distributed.initialize`), the mesh spans every process's devices, each process
computes its share, and the results are gathered on every process.

The sharded program is compiled once per function object, batch shapes and options
(`eqx.filter_jit` over the function, the batch and the mesh): calling `sweep` again with the
same function reuses it. Pass the same function object (a named function, or a lambda kept
in a variable), not a new lambda per call.

How the batch is split can change a lane's last bits: each device vmaps its own block (and
the padding), and the batch a computation is vmapped in changes the rounding of XLA's
vectorized code. Converged lanes agree to within their tolerance (~1e-8 with the default
rtol = atol = 1e-8; 64 Lotka-Volterra final states were bitwise equal on one and on two
processes, four converged multi-start fits agreed to 2e-13), but an unconverged lane (a fit
stopped at its step budget, a solve at max_steps) stops wherever its own path got to, and
that can differ between shardings. Compare results across device counts at the
tolerance, not bitwise (`scripts/sweep_multihost.py` runs a sweep over N processes).

Multi-start fits (`fit_sweep`) are where lock step hurts: a batch of fits waits for its
slowest member at every level (the optimizer's iterations, each line search's trial points,
each trial solve's steps), and a line search's wild trial point can take a solve to its
`max_steps`. Measured on Lotka-Volterra (8 starts × 50 L-BFGS iterations, float64, a loaded
2-core CPU, `benchmarks/sweep.py` and RESULTS.md): the whole fit `vmap`ped in lock step ran
110 s after compiling (27 s with the solves capped at 1024 steps), a pool of 8 `vmap`ped
lanes that retire with the solves capped at 2048 steps 49 s, and a Python loop of one
compiled single-start fit 1.8 s. On CPU a `vmap`ped gradient of 8 adaptive solves cost
22-31 ms against 4-8 ms for the 8 one after another, so lanes gain nothing there: the CPU
default runs the starts one after another inside one compiled program (`lax.map` over
blocks of 64 starts, each stage a `while` loop that stops when its start does): 16 starts
0.47 s against 0.57 s for the Python loop. Wide lanes with retirement (`chunk_size > 1`,
a pool refilled between compiled chunks of iterations) remain for accelerators, where
lanes run in parallel. Either way the inner solves are capped (`with_step_budget`) at 4×
the steps of the starts' own solves, so a trial point's solve fails fast.

Compiling the one-lane program (64 starts per call, Lotka-Volterra, L-BFGS with the zoom
line search) takes 6.0 CPU seconds: tracing 1.05, lowering to StableHLO 0.2, XLA 4.8; with
the backtracking line search (`LBFGS(linesearch="backtracking")`) 4.0 (0.7, 0.2, 3.2)
(`benchmarks/fit_compile.py --what sweep`). It was 13.3 (8.8 backtracking) while the
stages took the gradient of the solve in reverse mode and the L-BFGS step evaluated the
loss at its start as well as in its line search (see `jode.fitting.stages.objective`).
One program serves every block and every later sweep of the same model, stages and step
budget (a power of two, so few values occur); the block is fixed at 64 starts, so the
batch size does not recompile.

Example:
    >>> thetas = jode.sweeping.grid(alpha=jnp.linspace(1, 2, 32), beta=jnp.linspace(0.5, 1.5, 32))
    >>> def final(p):
    ...     return jode.solve(f, y0, 0.0, 10.0, p).ys[-1]
    >>> out = jode.sweep(final, thetas)
"""

from __future__ import annotations

import copy
import functools
import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

__all__ = ["grid", "sweep", "fit_sweep", "batch_size", "FitSweep", "with_step_budget"]

_AXIS = "batch"
_BLOCK = 64  # starts per call of the sequential (one lane) program


def grid(**axes) -> jax.Array:
    """The Cartesian product of 1-D value arrays as a batch, shape (Π n_k, len(axes)).

    The first named axis varies slowest (`indexing="ij"`), so the result reshapes to
    `(n_1, n_2, …, len(axes))`.
    """
    if not axes:
        raise ValueError(
            "grid needs at least one named axis, e.g. grid(alpha=jnp.linspace(1, 2, 8))"
        )
    arrays = []
    for name, values in axes.items():
        arr = jnp.asarray(values)
        if arr.ndim != 1 or arr.shape[0] == 0:
            raise ValueError(
                f"grid axis {name!r} must be a non-empty 1-D array; got shape {arr.shape}"
            )
        arrays.append(arr)
    dtype = jnp.result_type(*arrays)
    mesh = jnp.meshgrid(*[a.astype(dtype) for a in arrays], indexing="ij")
    return jnp.stack([m.reshape(-1) for m in mesh], axis=-1)


def batch_size(batch) -> int:
    """The common leading dimension of a batch pytree (ValueError if none or mixed)."""
    leaves = jax.tree.leaves(batch)
    if not leaves:
        raise ValueError("the batch is empty: pass arrays with a leading batch axis")
    if any(np.ndim(x) and np.shape(x)[0] == 0 for x in leaves):
        raise ValueError(
            "the batch has 0 rows (a leading axis of size 0); pass at least one element"
        )
    sizes = {np.shape(x)[0] if np.ndim(x) else None for x in leaves}
    if None in sizes or len(sizes) != 1:
        raise ValueError(
            "every leaf of the batch needs the same leading (batch) axis; got leading sizes "
            f"{sorted(str(s) for s in sizes)}"
        )
    return sizes.pop()


def _pad(batch, total):
    """Pad the leading axis to `total` by repeating the last element (a valid input)."""

    def pad(x):
        x = np.asarray(x)
        extra = total - x.shape[0]
        if extra == 0:
            return x
        return np.concatenate([x, np.repeat(x[-1:], extra, axis=0)], axis=0)

    return jax.tree.map(pad, batch)


class _PerDevice(eqx.Module):
    """One device's block: `fn` vmapped over it, in chunks of `chunk_size` if given."""

    fn: object
    chunk_size: int | None = eqx.field(static=True)

    def __call__(self, block):
        if self.chunk_size is None:
            return jax.vmap(self.fn)(block)
        return jax.lax.map(self.fn, block, batch_size=self.chunk_size)


@eqx.filter_jit
def _program(fn, global_batch, chunk_size, mesh):
    # One cached program per (fn, shapes, chunk_size, mesh): `fn` is static when it holds no
    # arrays (hashed by identity), and its arrays are traced arguments when it does (e.g.
    # a loss in a `_FitOne`), so new data never recompiles.
    return jax.shard_map(
        _PerDevice(fn, chunk_size), mesh=mesh, in_specs=P(_AXIS), out_specs=P(_AXIS),
        check_vma=False,
    )(global_batch)


def sweep(fn, batch, *, chunk_size: int | None = None, devices=None, gather: bool = True):
    """`fn` over every element of `batch`, vmapped in chunks and sharded over devices.

    Args:
        fn: a pure function of one element (one row of every leaf), returning a pytree.
        batch: a pytree of arrays with a common leading axis B (e.g. from `grid`).
        chunk_size: elements vmapped at once on each device (bounds memory); default all.
        devices: the devices to shard over; default every device (all processes' devices
            after `jax.distributed.initialize`, else `jax.local_devices()`).
        gather: return host NumPy arrays gathered from every process (default), or the
            global sharded `jax.Array`s (padded to a multiple of the device count).

    Returns:
        fn's output pytree with a leading axis of size B.

    Raises:
        ValueError: for an empty batch (no leaves, or 0 rows), mismatched leading axes or a
            bad chunk_size.
    """
    n = batch_size(batch)
    if chunk_size is not None and (not isinstance(chunk_size, int) or chunk_size < 1):
        raise ValueError(f"chunk_size must be a positive int or None; got {chunk_size!r}")
    devices = list(jax.devices() if devices is None else devices)
    n_dev = len(devices)
    per_dev = math.ceil(n / n_dev)
    if chunk_size is not None:
        per_dev = math.ceil(per_dev / chunk_size) * chunk_size
    total = per_dev * n_dev
    padded = _pad(batch, total)
    mesh = Mesh(np.asarray(devices), (_AXIS,))
    sharding = NamedSharding(mesh, P(_AXIS))

    # Every process holds the (small) batch on the host; each device takes its own block.
    def place(x):
        return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])

    global_batch = jax.tree.map(place, padded)
    chunk = chunk_size if chunk_size is None else min(chunk_size, per_dev)
    out = _program(fn, global_batch, chunk, mesh)
    if not gather:
        return out
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        out = multihost_utils.process_allgather(out, tiled=True)
    return jax.tree.map(lambda x: np.asarray(x)[:n], out)


class _FitOne(eqx.Module):
    """θ0 -> (θ̂, final loss) of `run_stages`: a module rather than a closure, so the
    compiled sweep is found again for the same loss structure and stages."""

    loss: object
    stages: tuple

    def __call__(self, theta):
        from .fitting.stages import run_stages

        return run_stages(self.loss, self.stages, theta)


class FitSweep(tuple):
    """`(θ̂ for every start, their final losses)` — unpacks as a pair — with

    Attributes:
        status: each start's last `FitStatus` (`jode.RESULTS`: CONVERGED, MAX_STEPS,
            NONFINITE), shape (B,).
        iterations: each start's optimizer iterations, summed over stages, shape (B,).
        stats: how the batch ran: `lockstep_iterations_per_lane` (Σ over compiled calls of
            width × iterations per call, divided by B: the work a lane cost, counting the
            iterations it waited in lock step), `calls`, `width`, `chunk_iterations`,
            `step_budget` (the inner solves' max_steps, or None) and `retired` (whether
            finished lanes were replaced).
    """

    status: np.ndarray
    iterations: np.ndarray
    stats: dict

    def __new__(cls, params, losses, status=None, iterations=None, stats=None):
        out = super().__new__(cls, (params, losses))
        out.status = status
        out.iterations = iterations
        out.stats = {} if stats is None else stats
        return out


def _next_pow2(n: int) -> int:
    return 1 << max(int(n) - 1, 0).bit_length()


@jax.jit
def _solve_steps_program(loss, thetas):
    from .ode.solve import solve

    def steps(theta):
        y0, args = loss.split(loss.extract(loss.init(theta)))
        opts = loss.options()
        opts["throw"] = False
        sol = solve(loss.vector_field, y0, loss.t0, loss.ts[-1], args, saveat=loss.ts, **opts)
        return sol.stats["steps"], sol.status == 0

    return jax.vmap(steps)(thetas)


def _solve_steps(loss, thetas):
    """The steps of each start's solve that succeeds (compiled once per loss structure)."""
    n = batch_size(thetas)
    out = []
    for lo in range(0, n, _BLOCK):  # fixed blocks: one program for every batch size
        m = min(_BLOCK, n - lo)
        steps, ok = _solve_steps_program(loss, _pad(_take(thetas, slice(lo, lo + m)), _BLOCK))
        out.append(np.asarray(steps)[:m][np.asarray(ok)[:m]])
    return np.concatenate(out)


def with_step_budget(loss, thetas, factor: float = 4.0):
    """`loss` with its solves capped at `factor` × the most steps a start's solve takes.

    The starts whose own solve fails are left out of the measure (they fail as before).
    A line search tries points far from the accepted one; where their solve becomes stiff or
    fast it would take up to the loss's `max_steps` (16384 by default) while, in a batch, every
    other lane waits for it. Capped, such a trial solve stops early with MAX_STEPS, its loss is
    NaN, and the line search rejects the point as it rejects any non-finite value (optax's
    zoom and backtracking searches treat NaN as +inf, i.e. a failed decrease condition). The
    budget is a power of two (one compiled program per value) and never above the loss's own
    `max_steps`. Returns (loss, budget); losses without adaptive `TrajectoryLoss` solves are
    returned unchanged with budget None.
    """
    from .fitting.loss import TrajectoryLoss

    if not isinstance(loss, TrajectoryLoss):
        return loss, None
    opts = loss.options()
    if opts.get("n_steps") is not None or opts.get("backend", "jode") != "jode":
        return loss, None
    if opts.get("dt0") is not None and opts.get("controller") is None:
        return loss, None  # constant steps: the work is fixed
    steps = _solve_steps(loss, thetas)
    current = int(opts.get("max_steps", 4096))
    if steps.size == 0:  # no start's solve succeeds: nothing to measure the budget by
        return loss, None
    budget = min(current, _next_pow2(max(int(math.ceil(factor * steps.max())), 16)))
    if budget >= current:
        return loss, None
    capped = copy.copy(loss)
    opts["max_steps"] = budget
    opts.pop("throw", None)
    object.__setattr__(capped, "solve_options", tuple(sorted(opts.items())))
    return capped, budget


def _take(tree, idx):
    return jax.tree.map(lambda x: np.asarray(x)[idx], tree)


def _put(tree, idx, values):
    def put(x, v):
        x = np.array(x)
        x[idx] = np.asarray(v)
        return x

    return jax.tree.map(put, tree, values)


def _run_stage_pool(loss, stage, params, width, chunk_iterations, stats):
    """One stage over every start with a pool of `width` lanes and one compiled chunk.

    Every call runs `chunk_iterations` iterations of all `width` lanes (`vmap` of a
    `lax.scan`); between calls the lanes whose stage finished (converged, out of steps or
    non-finite) hand their state back and take the next waiting start, so a batch never
    waits for its slowest member for longer than one call. Once no start waits, the free
    lanes repeat an active lane (the lock-step cost of a call is that of its slowest lane,
    so a copy costs no extra iterations). Returns every start's final `StageState`.
    """
    from .fitting._fit import _compiled
    from .fitting.stages import FitStatus

    n = jax.tree.leaves(params)[0].shape[0]
    init_fn, chunk_fn = _compiled(stage, chunk_iterations, True)
    aux = jnp.asarray(jnp.inf, jnp.result_type(float))
    # Initial states of every start, `width` at a time through one compiled init.
    blocks = []
    for lo in range(0, n, width):
        block = _pad(_take(params, slice(lo, lo + width)), width)
        blocks.append(_take(init_fn(stage, loss, block, aux), slice(0, min(width, n - lo))))
    states = jax.tree.map(lambda *xs: np.concatenate(xs), *blocks)
    status = np.asarray(states.status)
    waiting = [i for i in range(n) if status[i] == FitStatus.RUNNING]
    slots = np.full(width, -1)
    pool = _take(states, np.zeros(width, int))
    while True:
        free = np.flatnonzero(slots < 0)
        take = min(len(free), len(waiting))
        if take:
            new, waiting = waiting[:take], waiting[take:]
            slots[free[:take]] = new
            pool = _put(pool, free[:take], _take(states, np.asarray(new)))
        busy = np.flatnonzero(slots >= 0)
        if busy.size == 0:
            break
        idle = np.flatnonzero(slots < 0)
        if idle.size:  # copies of active lanes: no extra lock-step iterations
            pool = _put(pool, idle, _take(pool, busy[np.arange(idle.size) % busy.size]))
        pool = jax.tree.map(np.asarray, chunk_fn(stage, loss, pool, aux)[0])
        stats["calls"] += 1
        stats["lane_iterations"] += width * chunk_iterations
        done = busy[np.asarray(pool.status)[busy] != FitStatus.RUNNING]
        if done.size:
            states = _put(states, slots[done], _take(pool, done))
            slots[done] = -1
    return states


@functools.cache
def _sequential_program(kind, structure):
    """One compiled program per stage type: a block of starts one after another (`lax.map`),
    each running its stage as a `while` loop until it converges, fails or runs out of steps.
    Nothing waits in lock step, and padding lanes (marked finished) cost one loss each."""
    del kind, structure  # the cache key
    from .fitting.stages import FitStatus, init_state, stage_step

    def block(stage, loss, params, live, aux):
        def one(args):
            p, alive = args
            s = init_state(loss, stage, p, aux)
            s = s._replace(status=jnp.where(alive, s.status, FitStatus.CONVERGED))
            return jax.lax.while_loop(lambda s: s.status == FitStatus.RUNNING,
                                      lambda s: stage_step(loss, stage, s, aux), s)

        return jax.lax.map(one, (params, live))

    return jax.jit(block)


def _run_stage_sequential(loss, stage, params, block, stats):
    """One stage over every start, `block` starts per call of one compiled program."""
    n = jax.tree.leaves(params)[0].shape[0]
    program = _sequential_program(type(stage), jax.tree.structure(stage))
    aux = jnp.asarray(jnp.inf, jnp.result_type(float))
    out = []
    for lo in range(0, n, block):
        m = min(block, n - lo)
        live = np.arange(block) < m
        part = _pad(_take(params, slice(lo, lo + m)), block)
        states = program(stage, loss, part, live, aux)
        out.append(_take(states, slice(0, m)))
        stats["calls"] += 1
    states = jax.tree.map(lambda *xs: np.concatenate(xs), *out)
    stats["lane_iterations"] += int(np.sum(states.step))
    return states


def _fit_retiring(loss, thetas, stages, width, chunk_iterations, step_budget):
    from .fitting.stages import FitStatus

    n = batch_size(thetas)
    thetas = jax.tree.map(lambda x: jnp.asarray(x, jnp.result_type(float)), thetas)
    budget = None
    if step_budget is not None:
        loss, budget = with_step_budget(loss, thetas, step_budget)
    stats = dict(calls=0, lane_iterations=0, width=width, chunk_iterations=chunk_iterations,
                 step_budget=budget, retired=True)
    params = jax.vmap(loss.init)(thetas)
    iterations = np.zeros(n, int)
    for stage in stages:
        if width == 1:
            states = _run_stage_sequential(loss, stage, params, _BLOCK, stats)
        else:
            states = _run_stage_pool(loss, stage, params, width, chunk_iterations, stats)
        params = states.params
        iterations += np.asarray(states.step)
        status = np.asarray(states.status)
        value = np.asarray(states.value)
    stats["lockstep_iterations_per_lane"] = stats.pop("lane_iterations") / n
    out = jax.tree.map(np.asarray, jax.vmap(loss.extract)(params))
    return FitSweep(out, value, status=np.vectorize(FitStatus)(status), iterations=iterations,
                    stats=stats)


def fit_sweep(loss, thetas, stages, *, chunk_size: int | None = None, devices=None,
              retire: bool | None = None, chunk_iterations: int = 5,
              step_budget: float | None = 4.0):
    """Fit from every initial guess in `thetas` (multi-start) as one batched computation.

    Each guess runs the stages of `jode.fitting.run_stages(loss, stages, θ0)` (no progress
    bar). Three ways to run the batch:

    - One lane (`chunk_size=1`, the default on CPU): one compiled program takes 64 guesses
      per call and fits them one after another (`lax.map`), each stage a `while` loop that
      ends when that guess converges, fails or runs out of steps: no guess waits for another.
    - Retiring lanes (`chunk_size=W > 1`, default min(B, 64) on accelerators): W lanes run
      `chunk_iterations` iterations per call of one compiled, `vmap`ped chunk; between
      calls, lanes whose fit finished take the next waiting guess, so no lane waits for the
      slowest fit for more than one call.
    - One sharded program (`retire=False`, the default over several devices or processes):
      `sweep` of the whole fit, every lane running every stage's full step budget in lock
      step, `chunk_size` lanes at a time.

    One program per stage type, loss structure and width serves every call of a sweep and
    later sweeps of the same model and shapes.

    With `step_budget` (default 4), the inner solves of a `TrajectoryLoss` are capped at that
    many times the most steps a guess's own solve takes (`with_step_budget`): a line search's
    wild trial point then fails fast (its loss is NaN, which the line search rejects) instead
    of running to `max_steps` with every lane waiting. None keeps the loss's max_steps.

    Returns:
        A `FitSweep`: unpacks as (θ̂ for every guess, their final losses), with each guess's
        `status`, `iterations` and the batch's `stats` (lock-step iterations per lane).

    Raises:
        ValueError: for an empty or ragged batch, a bad chunk_size or chunk_iterations, or
            retire=True over several devices or processes.
    """
    stages = tuple(stages)
    if chunk_size is not None and (not isinstance(chunk_size, int) or chunk_size < 1):
        raise ValueError(f"chunk_size must be a positive int or None; got {chunk_size!r}")
    if not isinstance(chunk_iterations, int) or chunk_iterations < 1:
        raise ValueError(
            f"chunk_iterations must be a positive int; got chunk_iterations={chunk_iterations!r}"
        )
    if step_budget is not None and not step_budget >= 1:
        raise ValueError(
            f"step_budget must be a number >= 1 (a multiple of the starts' solve steps) or "
            f"None; got step_budget={step_budget!r}"
        )
    single = (devices is None or len(list(devices)) == 1) and jax.process_count() == 1
    if devices is None and len(jax.devices()) > 1:
        single = False
    if retire is None:
        retire = single
    if retire and not single:
        raise ValueError(
            "retire=True runs on one device in one process; pass devices=[one device], or "
            "retire=False to shard the whole fit over several devices"
        )
    if not retire:
        return FitSweep(*sweep(_FitOne(loss, stages), thetas, chunk_size=chunk_size,
                               devices=devices), stats=dict(retired=False))
    n = batch_size(thetas)
    if chunk_size is None:
        width = 1 if jax.default_backend() == "cpu" else min(64, _next_pow2(n))
    else:
        width = chunk_size
    with jax.default_device(list(devices)[0] if devices is not None else jax.devices()[0]):
        return _fit_retiring(loss, thetas, stages, width, chunk_iterations, step_budget)

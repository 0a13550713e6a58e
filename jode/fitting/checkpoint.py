"""Checkpoints of a fit: NumPy `.npz` files of the state's leaves (no pickle).

A checkpoint holds the phase index, the leaves of that phase's `StageState` (parameters and
optimizer state), the loss history so far, and a fingerprint of the fit: a SHA-256 hash of
each thing that determines it (the data, times and weights as array bytes, the model and
solver options, θ0, the stages, the strategy). A checkpoint is resumed only into the fit
that wrote it; otherwise the error names what differs. Loading reads with
`np.load(..., allow_pickle=False)`, rebuilds the state from a template of the same structure
(`jax.eval_shape` of the phase's initial state) and validates every value: a damaged file
is a `ValueError` naming the file, never a half-restored fit.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import types
import zipfile
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

_REQUIRED = ("phase", "history", "history_lengths", "fingerprint")


# --- fingerprints --------------------------------------------------------------------
def describe(obj, depth: int = 0) -> str:
    """A description of `obj` that is stable across processes: arrays by dtype, shape and
    a hash of their bytes, functions by module, qualified name, bytecode and closure,
    modules and dataclasses by type and fields (never by memory address)."""
    if depth > 8:
        return "…"
    d = functools.partial(describe, depth=depth + 1)
    if obj is None or isinstance(obj, bool | int | float | complex | str | bytes):
        return repr(obj)
    if isinstance(obj, np.ndarray | np.generic | jax.Array):
        arr = np.asarray(obj)
        digest = hashlib.sha256(np.ascontiguousarray(arr).tobytes()).hexdigest()[:16]
        return f"array({arr.dtype},{arr.shape},{digest})"
    if isinstance(obj, tuple | list):
        return "(" + ",".join(d(x) for x in obj) + ")"
    if isinstance(obj, dict):
        return "{" + ",".join(f"{d(k)}:{d(v)}" for k, v in sorted(obj.items(), key=str)) + "}"
    if isinstance(obj, functools.partial):
        return f"partial({d(obj.func)},{d(obj.args)},{d(obj.keywords)})"
    if isinstance(obj, types.MethodType):
        return f"method({d(obj.__self__)}.{obj.__func__.__qualname__})"
    if isinstance(obj, types.FunctionType):
        code = obj.__code__
        consts = tuple(c for c in code.co_consts if not isinstance(c, types.CodeType))
        cells = tuple(c.cell_contents for c in (obj.__closure__ or ()) if _filled(c))
        body = hashlib.sha256(code.co_code + d(consts).encode()).hexdigest()[:16]
        return f"{obj.__module__}.{obj.__qualname__}#{body}{d(cells)}"
    if isinstance(obj, type):
        return f"{obj.__module__}.{obj.__qualname__}"
    name = f"{type(obj).__module__}.{type(obj).__qualname__}"
    if isinstance(obj, eqx.Module) or dataclasses.is_dataclass(obj):
        fields = {f.name: getattr(obj, f.name, None) for f in dataclasses.fields(obj)}
        return name + d(fields)
    if callable(obj) and hasattr(obj, "__name__"):
        return f"{getattr(obj, '__module__', '')}.{obj.__name__}"
    return name


def _filled(cell) -> bool:
    try:
        cell.cell_contents  # noqa: B018
    except ValueError:
        return False
    return True


def digest(obj) -> str:
    """A short SHA-256 of `describe(obj)`."""
    return hashlib.sha256(describe(obj).encode()).hexdigest()[:20]


def fit_fingerprint(loss, theta0, stages, strategy, batched: bool) -> dict:
    """{what: hash} for everything that determines a fit, so that a mismatch can be named."""
    base = getattr(loss, "base", loss)
    if hasattr(base, "vector_field") and hasattr(base, "solve_options"):  # a TrajectoryLoss
        parts = {
            "data": digest(base.data),
            "times": digest((base.ts, base.t0)),
            "weights": digest(base.weights),
            "y0": digest(base.y0),
            "model": digest((base.vector_field, base.split_fn)),
            "loss options": digest((base.n_state, base.log_space, base.n_params,
                                    base.solve_options)),
        }
    else:
        arrays, static = eqx.partition(base, eqx.is_array)
        parts = {"loss arrays": digest(jax.tree.leaves(arrays)), "loss": digest(static)}
    parts["theta0"] = digest((jax.tree.structure(theta0).num_leaves, jax.tree.leaves(theta0),
                              bool(batched)))
    parts["stages"] = digest(tuple(stages))
    parts["strategy"] = digest(strategy)
    return parts


# --- files ---------------------------------------------------------------------------
def save(path, phase: int, state, history: list, fingerprint: dict) -> None:
    """Write atomically (temporary file, then rename): an interruption leaves the last one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {f"leaf_{i:05d}": np.asarray(x) for i, x in enumerate(jax.tree.leaves(state))}
    lengths = np.asarray([len(h) for h in history], np.int64)
    flat_hist = (
        np.concatenate([np.asarray(h, np.float64).reshape(len(h), -1) for h in history])
        if history and lengths.sum() else np.zeros((0, 1))
    )
    tmp = path.with_name(path.name + ".tmp.npz")
    with open(tmp, "wb") as fh:
        np.savez(
            fh, phase=np.asarray(phase, np.int64), history=flat_hist, history_lengths=lengths,
            fingerprint=np.asarray(json.dumps(fingerprint, sort_keys=True)), **arrays,
        )
    os.replace(tmp, path)


def _damaged(path, why: str) -> ValueError:
    return ValueError(
        f"the checkpoint {path} is damaged or not a jode fit checkpoint ({why}); delete it, "
        "or pass resume='fresh' to start the fit over"
    )


def _read(path) -> dict:
    """Every array of the file, read without pickle; a ValueError naming the file otherwise."""
    try:
        with np.load(Path(path), allow_pickle=False) as z:
            if not isinstance(z, np.lib.npyio.NpzFile):
                raise _damaged(path, "a single array, not an .npz archive")
            return {k: z[k] for k in z.files}
    except ValueError as exc:
        if str(exc).startswith("the checkpoint"):
            raise
        # NumPy's own message here suggests allow_pickle=True, which would be unsafe.
        raise _damaged(path, "not an .npz archive of plain arrays") from None
    except (OSError, EOFError, KeyError, zipfile.BadZipFile, RuntimeError) as exc:
        raise _damaged(path, f"unreadable: {type(exc).__name__}") from None


def load(path, template_fn, fingerprint: dict, n_phases: int):
    """(phase, state, history) from a checkpoint; `template_fn(phase)` gives the state's
    abstract structure (a pytree of ShapeDtypeStruct) for that phase.

    Raises:
        ValueError: if the checkpoint belongs to a different fit (naming what differs), or
            is damaged (naming the file).
    """
    z = _read(path)
    missing = [k for k in _REQUIRED if k not in z]
    if missing:
        raise _damaged(path, f"missing {', '.join(missing)}")
    fp = z["fingerprint"]
    if fp.dtype.kind != "U" or fp.ndim != 0:
        raise _damaged(path, "the fingerprint is not a string")
    try:
        saved = json.loads(str(fp))
    except json.JSONDecodeError:
        saved = None
    if not isinstance(saved, dict):
        raise ValueError(
            f"the checkpoint {path} was written by another version of jode.fit and cannot be "
            "checked against this fit; delete it, or pass resume='fresh' to start over"
        )
    differ = sorted(set(saved) ^ set(fingerprint)
                    | {k for k in saved.keys() & fingerprint.keys() if saved[k] != fingerprint[k]})
    if differ:
        raise ValueError(
            f"the checkpoint {path} belongs to another fit: its {', '.join(differ)} "
            f"differ{'s' if len(differ) == 1 else ''} from this fit's. Pass resume='fresh' "
            "to overwrite it, or another checkpoint= path"
        )
    phase_arr = z["phase"]
    if phase_arr.ndim != 0 or phase_arr.dtype.kind not in "iu":
        raise _damaged(path, f"phase must be an integer; got {phase_arr.dtype}{phase_arr.shape}")
    phase = int(phase_arr)
    if not 0 <= phase < n_phases:
        raise _damaged(path, f"phase={phase} is outside this fit's 0..{n_phases - 1}")
    leaves, treedef = jax.tree.flatten(template_fn(phase))
    keys = sorted(k for k in z if k.startswith("leaf_"))
    if keys != [f"leaf_{i:05d}" for i in range(len(leaves))]:
        raise _damaged(path, f"{len(keys)} state arrays where this fit has {len(leaves)}")
    values = []
    for key, leaf in zip(keys, leaves, strict=True):
        arr = z[key]
        want = np.dtype(leaf.dtype)
        if arr.shape != tuple(leaf.shape):
            raise _damaged(path, f"{key} has shape {arr.shape}, expected {tuple(leaf.shape)}")
        if arr.dtype.kind != want.kind or (want.kind == "f" and arr.dtype != want):
            raise _damaged(path, f"{key} has dtype {arr.dtype}, expected {want}")
        if want.kind in "fc" and np.any(np.isnan(arr)):
            raise _damaged(path, f"{key} contains NaN")
        values.append(jnp.asarray(arr, leaf.dtype))
    state = jax.tree.unflatten(treedef, values)
    flat_hist, lengths = z["history"], z["history_lengths"]
    if flat_hist.dtype.kind != "f" or flat_hist.ndim != 2:
        raise _damaged(path, "the history is not a 2-D float array")
    if (lengths.dtype.kind not in "iu" or lengths.ndim != 1 or np.any(lengths < 0)
            or int(lengths.sum()) != flat_hist.shape[0] or lengths.shape[0] != phase + 1):
        raise _damaged(path, "the history lengths do not match the history")
    history, start = [], 0
    for n in lengths:
        history.append(flat_hist[start : start + n].squeeze(-1) if flat_hist.shape[-1] == 1
                       else flat_hist[start : start + n])
        start += n
    return phase, state, history

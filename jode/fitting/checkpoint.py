"""Checkpoints of a fit: NumPy `.npz` files of the state's leaves (no pickle).

A checkpoint holds the phase index, the leaves of that phase's `StageState` (parameters and
optimizer state), the loss history so far, and a fingerprint of the fit (phase count and
parameter shapes) so that a checkpoint is never resumed into a different fit. Loading
rebuilds the state from a template with the same structure (`jax.eval_shape` of the
phase's initial state) and `np.load(..., allow_pickle=False)`.
"""

from __future__ import annotations

import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np


def save(path, phase: int, state, history: list, fingerprint: str) -> None:
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
            fh, phase=np.asarray(phase), history=flat_hist, history_lengths=lengths,
            fingerprint=np.asarray(fingerprint), **arrays,
        )
    os.replace(tmp, path)


def load(path, template_fn, fingerprint: str):
    """(phase, state, history) from a checkpoint; `template_fn(phase)` gives the state's
    abstract structure (a pytree of ShapeDtypeStruct) for that phase.

    Raises:
        ValueError: if the checkpoint belongs to a different fit, or is damaged.
    """
    with np.load(Path(path), allow_pickle=False) as z:
        saved = str(z["fingerprint"])
        if saved != fingerprint:
            raise ValueError(
                f"the checkpoint {path} belongs to another fit ({saved}; this fit is "
                f"{fingerprint}); delete it or pass another checkpoint= path"
            )
        phase = int(z["phase"])
        template = template_fn(phase)
        leaves, treedef = jax.tree.flatten(template)
        keys = sorted(k for k in z.files if k.startswith("leaf_"))
        if len(keys) != len(leaves):
            raise ValueError(f"the checkpoint {path} does not match this fit's state")
        values = []
        for key, leaf in zip(keys, leaves, strict=True):
            arr = z[key]
            if arr.shape != tuple(leaf.shape):
                raise ValueError(
                    f"the checkpoint {path} does not match this fit's state ({key} has "
                    f"shape {arr.shape}, expected {tuple(leaf.shape)})"
                )
            values.append(jnp.asarray(arr, leaf.dtype))
        state = jax.tree.unflatten(treedef, values)
        flat_hist, lengths = z["history"], z["history_lengths"]
    history, start = [], 0
    for n in lengths:
        history.append(flat_hist[start : start + n].squeeze(-1) if flat_hist.shape[-1] == 1
                       else flat_hist[start : start + n])
        start += n
    return phase, state, history

"""Matplotlib helpers shared by the experiments (headless: the Agg backend)."""

from __future__ import annotations

import os
from pathlib import Path


def pyplot():
    """matplotlib.pyplot with a non-interactive backend unless one was chosen."""
    import matplotlib

    if "MPLBACKEND" not in os.environ and not _in_notebook():
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _in_notebook() -> bool:
    try:
        from IPython import get_ipython

        return get_ipython() is not None
    except ImportError:
        return False


def savefig(fig, path: Path, quick: bool = False) -> Path:
    """Save and close a figure, creating the folder; returns the path.

    With `quick=True` the figure first gets the quick-configuration label (`mark_quick`).
    """
    path = Path(path)
    if quick:
        mark_quick(fig)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    pyplot().close(fig)
    return path


#: The text a figure made by `jode reproduce --quick` carries.
QUICK_LABEL = "quick configuration: reduced sizes, not the published numbers"


def mark_quick(fig) -> None:
    """Stamp `fig` with `QUICK_LABEL`, right-aligned just below the figure's bottom edge
    (so it overlaps no axis label; `savefig`'s tight bounding box takes it in)."""
    fig.text(0.995, 0.0, QUICK_LABEL, ha="right", va="top", fontsize=7, color="0.35",
             style="italic")


def integer_ticks(ax, axis: str = "x") -> None:
    """Ticks at whole numbers only, for axes that count (years, epochs, iterations)."""
    from matplotlib.ticker import MaxNLocator

    target = ax.xaxis if axis == "x" else ax.yaxis
    target.set_major_locator(MaxNLocator(integer=True))


def fmt(x, digits: int = 4) -> str:
    """A number (or a sequence of numbers) for people: `2`, `0.5`, `(2, 0.5)`; never a
    NumPy repr such as `np.float64(2.0)`."""
    import numpy as np

    arr = np.asarray(x)
    if arr.ndim == 0:
        return f"{float(arr):.{digits}g}"
    return "(" + ", ".join(f"{float(v):.{digits}g}" for v in arr.ravel()) + ")"


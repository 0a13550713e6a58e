"""The Hudson's Bay Company lynx and snowshoe hare pelts, 1900-1920 (thousands).

The classic predator-prey series (Hewitt 1921, *The Conservation of the Wild Life of
Canada*; as tabulated by Howard 2009 and used by Carpenter 2018, "Predator-Prey Population
Dynamics: the Lotka-Volterra model in Stan"). The CSV shipped beside this module records
its source in its header lines and holds the values unchanged.
"""

from __future__ import annotations

from importlib import resources

import numpy as np

_FILE = "hudson_bay_lynx_hare.csv"


def load_lynx_hare(dtype=np.float64) -> dict:
    """The 21 yearly counts: {"year": (21,), "hare": (21,), "lynx": (21,), "source": str}.

    Hare (prey) and lynx (predator) pelts traded, in thousands, for the years 1900-1920.
    """
    text = resources.files("jode_experiments.data").joinpath(_FILE).read_text()
    lines = text.splitlines()
    source = "\n".join(ln.lstrip("# ") for ln in lines if ln.startswith("#"))
    rows = [ln for ln in lines if ln and not ln.startswith("#")]
    header = rows[0].split(",")
    values = np.asarray([[float(v) for v in r.split(",")] for r in rows[1:]])
    col = {name.strip().lower(): values[:, i] for i, name in enumerate(header)}
    return dict(
        year=col["year"].astype(np.int64),
        hare=col["hare"].astype(dtype),
        lynx=col["lynx"].astype(dtype),
        source=source,
    )

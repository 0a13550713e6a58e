"""One module per workflow. Each defines `NAME` (the `jode reproduce NAME` target) and
`run(out_dir: pathlib.Path, quick: bool) -> dict` that writes figures into `out_dir` and
returns the metrics (JSON-serializable) that the CLI saves as `metrics.json`."""

import importlib
import pkgutil


def available() -> dict:
    """NAME -> module for every experiment module in this package."""
    found = {}
    for info in pkgutil.iter_modules(__path__):
        module = importlib.import_module(f"{__name__}.{info.name}")
        name = getattr(module, "NAME", None)
        if name is not None and callable(getattr(module, "run", None)):
            found[name] = module
    return dict(sorted(found.items(), key=lambda kv: (getattr(kv[1], "ORDER", 50), kv[0])))

"""One module per workflow. Each defines `NAME` (the `jode reproduce NAME` target) and
`run(out_dir: pathlib.Path, quick: bool) -> dict` that writes figures into `out_dir` and
returns the metrics (JSON-serializable) that the CLI saves as `metrics.json`."""

import importlib
import pkgutil


def available(errors: dict | None = None) -> dict:
    """NAME -> module for every experiment module in this package.

    A module that fails to import is left out and its exception recorded in `errors`
    (module name -> exception) when a dict is given, so one broken workflow does not hide
    the others; with `errors=None` the exception propagates.
    """
    found = {}
    for info in pkgutil.iter_modules(__path__):
        if info.name.startswith("_"):
            continue
        try:
            module = importlib.import_module(f"{__name__}.{info.name}")
        except Exception as exc:
            if errors is None:
                raise
            errors[info.name] = exc
            continue
        name = getattr(module, "NAME", None)
        if name is not None and callable(getattr(module, "run", None)):
            found[name] = module
    return dict(sorted(found.items(), key=lambda kv: (getattr(kv[1], "ORDER", 50), kv[0])))

"""Progress for the reproductions: bars whose ETA leaves out compilation, and timed stages.

A target's first iteration usually compiles (seconds to minutes) and the rest reuse the
compiled code, so an ETA that counts the first iteration is wrong by that much: `steps`
starts its bar after the first item. `Stages` prints each stage as it starts and ends and
keeps the seconds per stage for metrics.json, so a slow stage is found by name.
"""

from __future__ import annotations

import contextlib
import sys
import time


def steps(items, desc: str, enabled: bool = True, mininterval: float = 1.0):
    """Iterate `items` with a tqdm bar that starts after the first (compiling) item.

    The bar is created with `initial=1` once the first item is done, so its rate and ETA
    are the steady state's.
    """
    items = list(items)
    if not enabled or not items:
        yield from items
        return
    from tqdm.auto import tqdm

    print(f"{desc}: item 1/{len(items)} (includes compilation)", file=sys.stderr, flush=True)
    yield items[0]
    with tqdm(total=len(items), initial=1, desc=desc, dynamic_ncols=True,
              mininterval=mininterval) as bar:
        for item in items[1:]:
            yield item
            bar.update(1)


class Stages:
    """Times named stages: `with stages("digits"): ...`; `stages.seconds` maps name -> s."""

    def __init__(self, target: str, enabled: bool = True):
        self.target = target
        self.enabled = enabled
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, name: str):
        if self.enabled:
            print(f"[{self.target}] {name} ...", file=sys.stderr, flush=True)
        start = time.perf_counter()
        yield
        self.seconds[name] = round(time.perf_counter() - start, 2)
        if self.enabled:
            print(f"[{self.target}] {name}: {self.seconds[name]:.1f} s", file=sys.stderr,
                  flush=True)

    def begin(self, name: str) -> None:
        """End the running stage (if any) and start `name`: for straight-line code."""
        self.end()
        self._open = self.__call__(name)
        self._open.__enter__()

    def end(self) -> None:
        """End the stage started by `begin` (if any)."""
        if getattr(self, "_open", None) is not None:
            self._open.__exit__(None, None, None)
            self._open = None

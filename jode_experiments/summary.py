"""`results/summary.md`: every target's headline figures against the targets they must meet.

`jode reproduce` writes it after its targets run, from every `results/NAME/metrics.json`
present (not only the targets just run). What a target's headline figures are is data:
`HEADLINES[NAME]` is a list of rows, each a dict with

- ``key``: the path to the figure in metrics.json, a tuple of dict keys;
- ``label``: what the figure is, for people (with units);
- ``target``: a number or bool, or ``Ref(path, factor)`` (another figure of the same
  metrics.json times `factor`), or None for a figure reported without a threshold;
- ``comparison``: one of ``<=``, ``<``, ``>=``, ``>``, ``==`` (value `comparison` target);
- ``source``: where the target comes from (the seed article, an issue);
- ``flag`` (optional): the acceptance flag of the target module's `QUICK_CANNOT_MEET` that
  this row belongs to, so a quick run that misses it says that quick mode cannot meet it.

A figure missing from metrics.json shows as "—": "not measured in quick mode" for a quick
run, "not measured" for a full one. Nothing here raises on a malformed or partial file.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import NamedTuple

SUMMARY_NAME = "summary.md"
MISSING = "—"


class Ref(NamedTuple):
    """A target taken from another figure of the same metrics.json, times `factor`."""

    key: tuple
    factor: float = 1.0
    label: str = ""


def _row(key, label, target, comparison, source, flag=None):
    return dict(key=tuple(key), label=label, target=target, comparison=comparison,
                source=source, flag=flag)


_TRIAL_PROBLEMS = {
    "ode1": "Problem 1",
    "ode2": "Problem 2 on [0, 2]",
    "ode2_0_5": "Problem 2 on [0, 5] (the blog's domain)",
    "ode3_ivp": "Problem 3, initial value problem",
    "ode3_bvp": "Problem 3, boundary value problem",
    "ode4": "Problem 4 (a system of two ODEs) on [0, 3]",
    "pde5": "Problem 5 (Dirichlet Poisson)",
    "pde6": "Problem 6 (Dirichlet Poisson, oscillating)",
    "pde7": "Problem 7 (Neumann edge)",
    "pde8": "Problem 8 (nonlinear, mixed conditions)",
}
_LAGARIS = "Lagaris et al. 1998 / issue 6"
_SYSTEMS = {"lotka_volterra": "Lotka-Volterra", "stuart_landau": "Stuart-Landau",
            "lorenz": "Lorenz"}
_DENSITIES = {"two_moons": "two moons", "eight_gaussians": "eight Gaussians",
              "checkerboard": "checkerboard"}
_FLOW = "flow (Bosh3)"  # the gradient flow's default on the test functions
_DIGITS_FLOW = "flow (Chebyshev), patience 50 evals"  # the flow the quick mode also runs

#: target name -> its headline rows (see the module docstring).
HEADLINES: dict[str, list[dict]] = {
    "solver": [
        *(_row((f"{s}/jode", "max_abs_error_vs_dop853"),
               f"{name}, t ≤ 10: jode Tsit5 max |error| vs DOP853 (rtol 1e-8)",
               Ref((f"{s}/diffrax", "max_abs_error_vs_dop853"), 1.5, "diffrax's"), "<=",
               "issue 3: errors no worse than diffrax's (tests allow 1.5x)")
          for s, name in (("lotka_volterra", "Lotka-Volterra"), ("lorenz", "Lorenz"))),
        *(_row((f"{s}/jode", "steps"), f"{name}: jode Tsit5 steps",
               Ref((f"{s}/diffrax", "steps"), 1.05, "diffrax's"), "<=",
               "issue 3: steps as diffrax's within 5%")
          for s, name in (("lotka_volterra", "Lotka-Volterra"), ("lorenz", "Lorenz"))),
        _row(("lorenz_portrait", "lobes_visited"),
             "Lorenz phase portrait: lobes of the attractor visited", 2, ">=",
             "issue 22: the figure shows the attractor"),
    ],
    "recovery": [
        *(r for s, name in _SYSTEMS.items() for r in (
            _row(("acceptance", s, "noise_free_max_rel_error"),
                 f"{name}, noise-free: max relative parameter error", 1e-4, "<=",
                 "issue 12"),
            _row(("acceptance", s, "all_seeds_loss_le_truth"),
                 f"{name}, noisy: final loss ≤ loss at the truth for every seed", True, "==",
                 "issue 12"),
        )),
        _row(("acceptance", "lorenz", "rates_max_rel_error"),
             "Lorenz: σ, ρ, β max relative error over the seeds", 1e-3, "<=",
             "issue 12 (the article: within 0.01%)"),
        _row(("acceptance", "coverage_all"),
             "truth inside the 95% interval (fraction of seed × parameter cases)", 0.90, ">=",
             "issue 12", flag="coverage_95"),
        _row(("lorenz_horizon", "noise_free"),
             "Lorenz, noise-free fit: prediction horizon (first t off the truth by > 1)",
             None, None, "issue 12: reported beside the article's ≈ 22"),
    ],
    "trial": [
        *(_row(("problems", p, "fine_grid"),
               f"{name}: max |ψ_t − ψ_exact|, 10x finer grid",
               1e-6 if p.startswith("ode") else 1e-5, "<=", _LAGARIS)
          for p, name in _TRIAL_PROBLEMS.items()),
        _row(("problems", "ode4", "over_seeds", "median_fine_grid"),
             "Problem 4: median over seeds 0-4 of the same error (recorded run)", 1e-6, "<=",
             "issue 22: the median of 5 seeds"),
        _row(("acceptance", "beats_euler_rk4_on_ivps"),
             "every initial value problem: error below Euler's and RK4's on the same points",
             True, "==", _LAGARIS, flag="beats_euler_rk4_on_ivps"),
    ],
    "neural-ode": [
        _row(("digits", "odenet", "test_accuracy"),
             "ODE-Net test accuracy on the digits split (seed 0)", 0.985, ">=",
             "issue 7 (Chen et al. 2018: 99.58% on MNIST)", flag="odenet_accuracy_ge_0.985"),
        _row(("tolerance", "nfe_monotone_in_tolerance"),
             "NFE falls monotonically as the evaluation tolerance loosens", True, "==",
             "issue 7"),
        _row(("memory", "backsolve_ratio"),
             "BacksolveAdjoint step memory, 10x steps / 1x (fresh process per point)", 1.2,
             "<=", "issue 7"),
        _row(("memory", "direct_ratio"), "DirectAdjoint step memory, 10x steps / 1x", 1.2, ">",
             "issue 7 (Direct grows)"),
        _row(("latent", "latent_extrap_mse"), "latent ODE extrapolation MSE (held out)",
             Ref(("latent", "rnn_extrap_mse"), 1.0, "the RNN's"), "<",
             "issue 7 (Rubanova et al. 2019 setting)", flag="latent_extrap_beats_rnn"),
        *(_row(("cnf", d, "margin_nats"),
               f"CNF − Gaussian held-out log-likelihood, {name} (nats)", 0.3, ">",
               "issue 7: a clear margin on every toy density",
               flag="cnf_beats_gaussian_every_density")
          for d, name in _DENSITIES.items()),
    ],
    "ode-optimizer": [
        *(r for f, name in (("camel", "six-hump camel"), ("goldstein_price", "Goldstein-Price"))
          for r in (
              _row(("test_functions", f, _FLOW, "median_grad_evals"),
                   f"{name}: gradient flow (Bosh3), median gradient evaluations",
                   Ref(("test_functions", f, "Adam", "median_grad_evals"), 1.0, "Adam's"), "<",
                   "issue 9"),
              _row(("test_functions", f, _FLOW, "reached_global"),
                   f"{name}: gradient flow (Bosh3), starts reaching the global minimum",
                   Ref(("test_functions", f, "Adam", "reached_global"), 1.0, "Adam's"), ">=",
                   "issue 9"),
          )),
        _row(("digits_flow_vs_adam", _DIGITS_FLOW, "accuracy_difference_points"),
             "digits 0-4: flow (Chebyshev) − Adam test accuracy (points)", -1.0, ">=",
             "issue 9: within 1 point of Adam or better"),
        _row(("digits_flow_vs_adam", _DIGITS_FLOW, "wall_time_ratio"),
             "digits 0-4: flow (Chebyshev) / Adam wall time (patience in evaluations)", 2.0,
             "<=", "issue 9 (the article: 8x)"),
    ],
    "deq": [
        _row(("cos_target_met",),
             "cos z = z: every fixed-point solver converged to ≤ 1e-12", True, "==", "issue 8"),
        _row(("digits_deq_accuracy",), "DEQ (Anderson) test accuracy on the digits split",
             0.97, ">=", "issue 8", flag="digits_target_met"),
        _row(("memory_ratio_10x_budget",),
             "training-step memory, 10x forward iteration budget / 1x", 1.2, "<=", "issue 8"),
    ],
}

_COMPARE = {
    "<=": lambda v, t: v <= t,
    "<": lambda v, t: v < t,
    ">=": lambda v, t: v >= t,
    ">": lambda v, t: v > t,
    "==": lambda v, t: v == t,
}
_SYMBOL = {"<=": "≤", "<": "<", ">=": "≥", ">": ">", "==": "="}


def lookup(metrics, key: tuple):
    """The value at `key` in `metrics`, or None when any part of the path is missing."""
    value = metrics
    for part in key:
        if isinstance(value, dict) and part in value:
            value = value[part]
        elif isinstance(value, list) and isinstance(part, int) and -len(value) <= part < len(
                value):
            value = value[part]
        else:
            return None
    return value


def _number(value):
    """`value` as a float or bool when it is one (NaN counts as missing), else None."""
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and not (isinstance(value, float) and math.isnan(value)):
        return value
    return None


def format_value(value) -> str:
    if value is None:
        return MISSING
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return MISSING
        if value == 0 or 1e-2 <= abs(value) < 1e4:
            return f"{value:.4g}"
        return f"{value:.2e}"
    return str(value)


def evaluate(row: dict, metrics: dict) -> dict:
    """One headline row against one metrics.json: value, target text and status."""
    quick = bool(metrics.get("quick"))
    value = _number(lookup(metrics, row["key"]))
    target, comparison = row["target"], row["comparison"]
    target_value = target
    if isinstance(target, Ref):
        ref = _number(lookup(metrics, target.key))
        target_value = None if ref is None else ref * target.factor
        scale = "" if target.factor == 1 else f"{target.factor:g} × "
        ref_name = target.label or "/".join(map(str, target.key))
        target_text = (f"{_SYMBOL[comparison]} {scale}{ref_name} "
                       f"({format_value(target_value)})")
    elif target is None or comparison is None:
        target_text = "reported, no threshold"
    elif isinstance(target, bool):
        target_text = "yes" if target else "no"
    else:
        target_text = f"{_SYMBOL[comparison]} {format_value(target)}"

    cannot = {q.get("flag") for q in metrics.get("quick_cannot_meet") or []
              if isinstance(q, dict)}
    if value is None:
        status = "not measured in quick mode" if quick else "not measured"
    elif target is None or comparison is None:
        status = "reported"
    elif target_value is None:
        status = "not measured in quick mode" if quick else "not measured"
        status += f" ({target.label or 'reference'} missing)"
    else:
        try:
            met = bool(_COMPARE[comparison](value, target_value))
        except TypeError:
            met = None
        if met is None:
            status = MISSING
        elif quick and row.get("flag") in cannot:
            status = ("met, but not conclusive in quick mode" if met
                      else "missed (quick configuration cannot meet it)")
        else:
            status = "met" if met else "missed"
    return dict(label=row["label"], value=format_value(value), target=target_text,
                status=status, source=row["source"])


def _read_metrics(path: Path):
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        return None, f"{type(exc).__name__}: {exc}"
    if not isinstance(data, dict):
        return None, "not a JSON object"
    return data, None


def _order(names):
    from jode_experiments import TARGETS

    known = [n for n in TARGETS if n in names]
    return known + sorted(n for n in names if n not in TARGETS)


def _cell(text: str) -> str:
    # A "|" inside a cell (|ψ_t − ψ_exact|) would end it: escape it for Markdown tables.
    return str(text).replace("|", "\\|").replace("\n", " ")


def target_section(name: str, metrics: dict, mtime: float | None = None) -> str:
    quick = bool(metrics.get("quick"))
    mode = "quick configuration" if quick else "full configuration"
    when = (time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(mtime))
            if mtime is not None else "time unknown")
    wall = _number(metrics.get("wall_time_s"))
    wall_text = f", {wall:.0f} s" if isinstance(wall, (int, float)) else ""
    lines = [f"## {name}", "", f"`results/{name}/metrics.json`: {mode}, written {when}"
             f"{wall_text}.", ""]
    rows = HEADLINES.get(name)
    if not rows:
        lines.append("No headline figures are defined for this target "
                     "(`jode_experiments.summary.HEADLINES`).")
        return "\n".join(lines)
    lines += ["| figure | measured | target | status | target from |", "|---|---|---|---|---|"]
    for row in rows:
        r = evaluate(row, metrics)
        cells = (r[k] for k in ("label", "value", "target", "status", "source"))
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    cannot = [q for q in metrics.get("quick_cannot_meet") or [] if isinstance(q, dict)]
    if quick and cannot:
        lines += ["", "Quick mode cannot meet:"]
        lines += [f"- `{q.get('flag')}`: {q.get('reason')}" for q in cannot]
    return "\n".join(lines)


def render(results: Path) -> str:
    """The text of summary.md for every target folder under `results`."""
    results = Path(results)
    found, broken, incomplete = {}, {}, []
    if results.is_dir():
        for folder in results.iterdir():
            if folder.name.startswith(".") or not folder.is_dir():
                continue
            if folder.name.endswith(".incomplete"):
                incomplete.append(folder.name)
                continue
            path = folder / "metrics.json"
            if not path.is_file():
                continue
            metrics, error = _read_metrics(path)
            if metrics is None:
                broken[folder.name] = error
            else:
                found[folder.name] = (metrics, path.stat().st_mtime)
    lines = [
        "# Reproduction summary",
        "",
        "Written by `jode reproduce` from every `metrics.json` under this folder (headline "
        "figures: `jode_experiments/summary.py`). \"met\"/\"missed\" compare the measured "
        "figure with the target; a quick run is not expected to meet the full targets, and "
        "figures it does not compute read \"—\". Full runs and their commands: "
        "`benchmarks/RESULTS.md`.",
        "",
    ]
    if not found and not broken:
        lines.append("No target has written metrics.json here yet.")
    for name in _order(list(found) + list(broken)):
        if name in broken:
            lines += [f"## {name}", "", f"`results/{name}/metrics.json` could not be read "
                      f"({broken[name]}).", ""]
            continue
        metrics, mtime = found[name]
        lines += [target_section(name, metrics, mtime), ""]
    if incomplete:
        lines += ["Runs that did not complete (their earlier results, if any, are above): "
                  + ", ".join(f"`{n}`" for n in sorted(incomplete)), ""]
    return "\n".join(lines).rstrip() + "\n"


def write_summary(results: Path) -> Path:
    """Write `results/summary.md` atomically (beside it, then renamed); returns its path."""
    results = Path(results)
    results.mkdir(parents=True, exist_ok=True)
    path = results / SUMMARY_NAME
    tmp = results / f".{SUMMARY_NAME}.tmp-{os.getpid()}"
    try:
        tmp.write_text(render(results))
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path

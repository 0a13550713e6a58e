"""Parameter recovery: Lotka-Volterra, Stuart-Landau, Lorenz, lynx-hare data and a UDE.

Reproduces the DiffEqFlux parameter-estimation article's three fits (Adam then L-BFGS on
θ = [initial state…, rates…] from the article's guesses) with jode, noise-free and over
noise seeds, and checks that every fit reaches the least-squares optimum (loss ≤ the loss
at the truth), that the Gauss-Newton 95% intervals cover the truth, and how far the fitted
Lorenz model predicts. Then fits Lotka-Volterra to the Hudson's Bay lynx-hare pelts with
standard errors, and trains a universal differential equation.

Quick mode: Lotka-Volterra (noise-free and one seed) and the lynx-hare fit, both by L-BFGS
alone, and the UDE trained on t ≤ 3. Full mode: all three systems with 5 seeds, the Lorenz
horizon, the UDE on t ≤ 10 (noise-free and noise seed 0).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jode import fitting as F
from jode_experiments.plot import fmt, integer_ticks, pyplot, savefig
from jode_experiments.progress import Stages

from . import recovery_systems as R

#: Small sequential steps, launch-bound on a GPU: `jode reproduce --device auto` runs
#: this target on the host CPU.
DEVICE = "cpu"

NAME = "recovery"
SEEDS = (0, 1, 2, 3, 4)
#: Acceptance flags the quick configuration cannot meet, and why.
QUICK_CANNOT_MEET = {
    "stuart_landau": "quick fits Lotka-Volterra only (Stuart-Landau is full mode)",
    "lorenz (rates_within_0_1pct, lorenz_horizon)": "quick fits Lotka-Volterra only",
    "coverage_95": "one noise seed cannot estimate a 95% coverage (full: 5 seeds)",
}
#: Axis labels of each system's state components (the models are nondimensional).
STATE_LABELS = {
    "lotka_volterra": ("x (prey)", "y (predator)"),
    "stuart_landau": ("ψ (phase, rad)", "R (amplitude)"),
    "lorenz": ("x", "y", "z"),
}
TITLES = {"lotka_volterra": "Lotka-Volterra", "stuart_landau": "Stuart-Landau",
          "lorenz": "Lorenz"}
TIME_LABEL = "t (model time units)"


def _system_block(system, seeds, quick, progress):
    """Noise-free fit, then one fit per noise seed; (metrics, artefacts for figures)."""
    clean = R.make_data(system, None)
    loss, res = R.fit_system(system, clean, quick=quick, progress=progress)
    errors = R.relative_errors(system, res.params)
    out = dict(
        noise_free=dict(params=np.asarray(res.params).tolist(), rel_error=errors.tolist(),
                        max_rel_error=float(errors.max()), loss=res.loss,
                        status=res.status.name.lower(), wall_time_s=res.wall_time),
        seeds={},
    )
    art = dict(noise_free=res)
    for seed in seeds:
        data = R.make_data(system, seed)
        loss_s, res_s = R.fit_system(system, data, quick=quick, progress=progress)
        out["seeds"][str(seed)] = R.seed_report(system, loss_s, res_s)
        art.setdefault("first", (data, loss_s, res_s))
    reports = list(out["seeds"].values())
    covered = np.asarray([r["covered"] for r in reports])
    rel = np.asarray([r["rel_error"] for r in reports])
    article = R.relative_errors(system, system.article)
    out["summary"] = dict(
        seeds=len(reports),
        all_loss_le_truth=bool(all(r["loss"] <= r["loss_at_truth"] for r in reports)),
        coverage_95=float(covered.mean()) if covered.size else None,
        mean_rel_error=rel.mean(axis=0).tolist() if rel.size else None,
        max_rel_error=rel.max(axis=0).tolist() if rel.size else None,
        article_rel_error=[None if np.isnan(e) else float(e) for e in article],
        names=list(system.names),
    )
    return out, art


def _fig_fits(systems, arts, out_dir, quick=False):
    plt = pyplot()
    fig, axes = plt.subplots(len(systems), 2, figsize=(11, 3.2 * len(systems)), squeeze=False)
    for row, system in zip(axes, systems, strict=True):
        data, loss, res = arts[system.name]["first"]
        ts = system.ts
        fine = np.linspace(ts[0], ts[-1], 1000)
        pred = np.asarray(loss.predict(res.params, jnp.asarray(fine)))
        labels = STATE_LABELS[system.name]
        for j in range(data.shape[1]):
            row[0].plot(ts, data[:, j], ".", ms=3, color=f"C{j}", alpha=0.6,
                        label=f"{labels[j]}: noisy data")
            row[0].plot(fine, pred[:, j], "-", color=f"C{j}", label=f"{labels[j]}: fitted model")
        row[0].set_title(f"{TITLES[system.name]}: fit (noise seed 0) vs noisy data")
        row[0].set_xlabel(TIME_LABEL)
        row[0].set_ylabel("state (model units)")
        row[0].legend(fontsize=7)
        if system.name == "stuart_landau":
            row[1].plot(pred[:, 1] * np.cos(pred[:, 0]), pred[:, 1] * np.sin(pred[:, 0]), "-",
                        label="fitted model")
            row[1].plot(data[:, 1] * np.cos(data[:, 0]), data[:, 1] * np.sin(data[:, 0]), ".",
                        ms=3, label="noisy data")
            row[1].set_xlabel("R cos ψ")
            row[1].set_ylabel("R sin ψ")
        else:
            k = 2 if data.shape[1] == 3 else 1
            row[1].plot(pred[:, 0], pred[:, k], "-", label="fitted model")
            row[1].plot(data[:, 0], data[:, k], ".", ms=3, label="noisy data")
            row[1].set_xlabel(STATE_LABELS[system.name][0])
            row[1].set_ylabel(STATE_LABELS[system.name][k])
        row[1].set_title(f"{TITLES[system.name]}: phase portrait")
        row[1].legend(fontsize=7)
    fig.tight_layout()
    savefig(fig, out_dir / "fit_vs_data.png", quick)


def _fig_validation(systems, arts, out_dir, quick=False):
    """Truth and fitted model from a new initial state; max |fitted − truth| per system."""
    panels = []
    for system in systems:
        if system.validation_y0 is None:
            continue
        _, _, res = arts[system.name]["first"]
        ts = np.linspace(0.0, system.validation_t1, 600)
        y0 = np.asarray(system.validation_y0)
        d = len(y0)
        true = R.reference_solve(system, y0, np.asarray(system.truth)[d:], ts)
        fitted = R.reference_solve(system, y0, np.asarray(res.params)[d:], ts)
        panels.append((system.name, y0, ts, true, fitted))
    if panels:
        validation_figure(panels, out_dir, quick)
    return {name: float(np.max(np.abs(fitted - true))) for name, _, _, true, fitted in panels}


def validation_figure(panels, out_dir, quick=False):
    """`panels`: (system name, new initial state, ts, true (n, d), fitted (n, d))."""
    plt = pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 3.8), squeeze=False)
    for ax, (name, y0, ts, true, fitted) in zip(axes[0], panels, strict=True):
        labels = STATE_LABELS[name]
        for j in range(true.shape[1]):
            ax.plot(ts, true[:, j], "-", color=f"C{j}", label=f"{labels[j]}: true model")
            ax.plot(ts, fitted[:, j], "--", color=f"C{j}", label=f"{labels[j]}: fitted model")
        ax.set_title(f"{TITLES[name]}: prediction from the new initial state {fmt(y0, 3)}")
        ax.set_xlabel(TIME_LABEL)
        ax.set_ylabel("state (model units)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    savefig(fig, out_dir / "validation.png", quick)


def _fig_losses(systems, arts, out_dir, quick=False):
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for system in systems:
        res = arts[system.name]["first"][2]
        title = TITLES[system.name]
        ax.semilogy(np.maximum(res.history, 1e-300), label=f"{title} (noise seed 0)")
        res0 = arts[system.name]["noise_free"]
        ax.semilogy(np.maximum(res0.history, 1e-300), ":", label=f"{title} (noise-free)")
    ax.set_xlabel("iteration (all phases)")
    ax.set_ylabel("loss (mean squared residual, model units²)")
    ax.set_title("parameter recovery: loss during the fit")
    integer_ticks(ax, "x")
    ax.legend(fontsize=7)
    savefig(fig, out_dir / "loss_curves.png", quick)


def _lorenz_horizon(system, arts, out_dir, quick=False):
    h_clean, ts, y_true, y_clean = R.prediction_horizon(system, arts["noise_free"].params)
    res = arts["first"][2]
    h_noisy, _, _, y_noisy = R.prediction_horizon(system, res.params)
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(9, 3.5))
    ax.plot(ts, y_true[:, 0], "k-", lw=1, label="truth")
    ax.plot(ts, y_noisy[:, 0], "C1--", lw=1, label="fitted to noisy data (seed 0)")
    ax.plot(ts, y_clean[:, 0], "C2:", lw=1, label="fitted to noise-free data")
    ax.axvline(h_noisy, color="C1", lw=0.8)
    ax.axvline(system.t1, color="gray", lw=0.8, ls="-.", label="end of training data")
    ax.text(h_noisy, ax.get_ylim()[1] * 0.9, f" diverges t={h_noisy:.1f}", color="C1")
    ax.set_xlabel(TIME_LABEL)
    ax.set_ylabel("x (model units)")
    ax.set_title("Lorenz: how far the fitted models predict")
    ax.legend(fontsize=7, loc="lower left")
    savefig(fig, out_dir / "lorenz_extrapolation.png", quick)
    return h_clean, h_noisy


def _lynx_hare(out_dir, progress, quick=False):
    # Quick mode: L-BFGS alone from the guess (full: 300 Adam steps first).
    stages = (F.LBFGS(steps=500),) if quick else None
    loss, res, report = R.fit_lynx_hare(progress=progress, stages=stages)
    years = np.asarray(report["years"])
    fine = np.linspace(0.0, years[-1] - years[0], 400)
    pred = np.asarray(loss.predict(res.params, jnp.asarray(fine)))
    lynx_hare_figure(years, np.asarray(loss.data), years[0] + fine, pred, out_dir, quick)
    return report


def lynx_hare_figure(years, data, fine_years, pred, out_dir, quick=False):
    """Pelt counts (markers) and the fitted Lotka-Volterra model (lines)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 3.8))
    for j, (label, marker) in enumerate((("hare (prey)", "o"), ("lynx (predator)", "s"))):
        ax.plot(years, data[:, j], marker, color=f"C{j}", ms=4, label=f"{label}: pelts")
        ax.plot(fine_years, pred[:, j], "-", color=f"C{j}", label=f"{label}: fitted model")
    ax.set_xlabel("year")
    ax.set_ylabel("pelts (thousands)")
    ax.set_title("Lotka-Volterra fitted to the Hudson's Bay pelts (log-space least squares)")
    integer_ticks(ax, "x")
    ax.legend(fontsize=7, ncol=2)
    savefig(fig, out_dir / "lynx_hare.png", quick)


def _ude_one(U, system, seed, config, progress):
    """Train the UDE on one data set; (metrics, artefacts for the figure)."""
    data = R.make_data(system, seed)
    clean = R.make_data(system, None)
    ts = system.ts
    field, loss, res = U.train_ude(ts, data, system.truth[:2], config, progress=progress)
    train = ts <= config.t1 + 1e-9
    # The states the data visits (the true trajectory at the observed times): there the
    # learned terms are compared with −βxy and γxy.
    on_train = U.term_errors(field, res.params, clean[train])
    on_all = U.term_errors(field, res.params, clean)
    pred = np.asarray(loss.predict(res.params, jnp.asarray(ts)))
    dev_truth = np.max(np.abs(pred - clean), axis=1)
    metrics = dict(
        noise_seed=seed, t1=config.t1, windows=list(config.windows),
        lbfgs_steps_per_window=config.lbfgs_steps, width=config.width, depth=config.depth,
        rk4_dt=config.dt, n_weights=int(sum(x.size for x in jax.tree.leaves(res.params))),
        terms_on_training_states=on_train, terms_on_states_to_t10=on_all,
        max_rel_l2_error=max(on_train["rel_l2"]), max_rel_max_error=max(on_train["rel_max"]),
        trajectory_rmse_vs_data=float(np.sqrt(np.mean((pred[train] - data[train]) ** 2))),
        trajectory_max_dev_from_truth_train=float(dev_truth[train].max()),
        trajectory_max_dev_from_truth_to_t10=float(dev_truth.max()),
        loss=res.loss, iterations=int(len(res.history)), status=res.status.name.lower(),
        wall_time_s=res.wall_time,
    )
    return metrics, dict(field=field, loss=loss, res=res, data=data, clean=clean, train=train)


def _fig_ude(U, runs, out_dir, quick=False):
    """Per run: the trajectory against the data, and each learned term against the true
    one along the true trajectory."""
    plt = pyplot()
    ts = R.SYSTEMS["lotka_volterra"].ts
    fig, axes = plt.subplots(len(runs), 3, figsize=(14, 3.8 * len(runs)), squeeze=False)
    for row, (label, art) in zip(axes, runs.items(), strict=True):
        train = art["train"]
        fine = np.linspace(0.0, ts[-1], 800)
        pred = np.asarray(art["loss"].predict(art["res"].params, jnp.asarray(fine)))
        t_end = float(ts[train][-1])
        for j, name in enumerate(("x (prey)", "y (predator)")):
            row[0].plot(ts, art["data"][:, j], ".", ms=3, color=f"C{j}", alpha=0.6)
            row[0].plot(fine, pred[:, j], "-", color=f"C{j}", label=f"UDE {name}")
        if t_end < ts[-1]:
            row[0].axvline(t_end, color="gray", ls="-.", lw=0.8, label="end of training data")
        top = 1.3 * float(np.max(art["data"]))  # an extrapolation that diverges stays readable
        row[0].set_ylim(-0.05 * top, top)
        row[0].set_title(f"{label}: UDE trajectory vs data")
        row[0].set_xlabel(TIME_LABEL)
        row[0].set_ylabel("population (model units)")
        row[0].legend(fontsize=7)
        learned = U.learned_terms(art["field"], art["res"].params, art["clean"])
        true = U.true_terms(art["clean"])
        for j, (ax, name) in enumerate(zip(row[1:], ("U₁ vs −βxy", "U₂ vs γxy"), strict=True)):
            ax.plot(ts, true[:, j], "k-", lw=1.2, label="true term")
            ax.plot(ts, learned[:, j], "C3--", lw=1.2, label="learned network")
            err = np.abs(learned[train, j] - true[train, j]).max() / np.abs(true[train, j]).max()
            ax.set_title(f"{name}\nmax error {100 * err:.2f}% of max|term| on t ≤ {t_end:g}",
                         fontsize=10)
            if t_end < ts[-1]:
                ax.axvline(t_end, color="gray", ls="-.", lw=0.8)
            ax.set_xlabel("t (states of the true trajectory, model time units)")
            ax.set_ylabel("term value (model units per time)")
            ax.legend(fontsize=7)
    fig.tight_layout()
    savefig(fig, out_dir / "ude_terms.png", quick)


def _ude(out_dir, quick, progress, write=None):
    """The universal differential equation on noise-free data (and, in full mode, the
    noisy recipe's seed 0): metrics per run (passed to `write` as each finishes), a figure."""
    from . import recovery_ude as U

    system = R.SYSTEMS["lotka_volterra"]
    config = U.QUICK if quick else U.FULL
    seeds = (None,) if quick else (None, 0)
    out, arts = {}, {}
    for seed in seeds:
        label = "noise-free" if seed is None else f"noise seed {seed}"
        out[label], arts[label] = _ude_one(U, system, seed, config, progress)
        if write is not None:
            write(out)
    _fig_ude(U, arts, out_dir, quick)
    return out


def _write_json_atomic(path: Path, data: dict) -> None:
    # Beside the target, then rename: a run that stops leaves the last complete file.
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=_jsonable) + "\n")
    os.replace(tmp, path)


def _jsonable(x):
    return x.item() if isinstance(x, np.generic) else np.asarray(x).tolist()


def run(out_dir: Path, quick: bool) -> dict:
    """Run the fits, write the figures into `out_dir`, return the metrics.

    metrics.json is rewritten as each part finishes (`parts_done` lists them), so a long
    run that stops keeps what it finished; `jode reproduce` then writes the final file.
    """
    jax.config.update("jax_enable_x64", True)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    progress = True
    names = ("lotka_volterra",) if quick else tuple(R.SYSTEMS)
    seeds = SEEDS[:1] if quick else SEEDS
    systems = [R.SYSTEMS[n] for n in names]
    metrics, arts = {"systems": {}, "quick": quick, "parts_done": []}, {}

    def write():
        _write_json_atomic(out_dir / "metrics.json", metrics)

    def done(part):
        metrics["parts_done"].append(part)
        write()

    stage = Stages(NAME)
    metrics["stage_seconds"] = stage.seconds
    for system in systems:
        with stage(f"{system.name}: noise-free fit and {len(seeds)} noise seed(s)"):
            metrics["systems"][system.name], arts[system.name] = _system_block(
                system, seeds, quick, progress)
        done(system.name)
    with stage("figures and validation"):
        _fig_fits(systems, arts, out_dir, quick)
        metrics["validation_max_abs_error"] = _fig_validation(systems, arts, out_dir, quick)
        _fig_losses(systems, arts, out_dir, quick)
    if "lorenz" in names:
        h_clean, h_noisy = _lorenz_horizon(R.SYSTEMS["lorenz"], arts["lorenz"], out_dir,
                                           quick)
        seeds_h = [R.prediction_horizon(R.SYSTEMS["lorenz"], r["params"])[0]
                   for r in metrics["systems"]["lorenz"]["seeds"].values()]
        metrics["lorenz_horizon"] = dict(
            noise_free=h_clean, seed0=h_noisy, seeds=seeds_h, article=R.ARTICLE_LORENZ_HORIZON,
            threshold=R.HORIZON_THRESHOLD)
    metrics["acceptance"] = _acceptance(metrics)
    done("figures")
    with stage("lynx-hare fit"):
        metrics["lynx_hare"] = _lynx_hare(out_dir, progress, quick)
    done("lynx_hare")

    def partial_ude(ude):
        metrics["ude"] = ude
        write()

    with stage("universal differential equation"):
        metrics["ude"] = _ude(out_dir, quick, progress, write=partial_ude)
    metrics["skipped_in_quick_mode"] = (
        ["stuart_landau", "lorenz", "noise seeds 1-4", "UDE on noisy data and on t > 3",
         "UDE: 2 windows of 300 L-BFGS steps (full: 3 of 800 on t <= 10)",
         "Adam warm-up of the Lotka-Volterra and lynx-hare fits (quick: L-BFGS alone)"]
        if quick else [])
    done("ude")
    return metrics


def _acceptance(metrics) -> dict:
    out = {}
    for name, block in metrics["systems"].items():
        s = block["summary"]
        entry = dict(
            noise_free_max_rel_error=block["noise_free"]["max_rel_error"],
            noise_free_within_1e_4=block["noise_free"]["max_rel_error"] <= 1e-4,
            all_seeds_loss_le_truth=s["all_loss_le_truth"],
            coverage_95=s["coverage_95"],
        )
        if name == "lorenz" and s["max_rel_error"] is not None:
            entry["rates_max_rel_error"] = max(s["max_rel_error"][3:])
            entry["rates_within_0_1pct"] = entry["rates_max_rel_error"] <= 1e-3
        out[name] = entry
    cov = [b["summary"]["coverage_95"] for b in metrics["systems"].values()]
    covered = [c for c in cov if c is not None]
    out["coverage_all"] = float(np.mean(covered)) if covered else None
    return out

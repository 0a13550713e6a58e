"""Parameter recovery: Lotka-Volterra, Stuart-Landau, Lorenz, lynx-hare data and a UDE.

Reproduces the DiffEqFlux parameter-estimation article's three fits (Adam then L-BFGS on
θ = [initial state…, rates…] from the article's guesses) with jode, noise-free and over
noise seeds, and checks that every fit reaches the least-squares optimum (loss ≤ the loss
at the truth), that the Gauss-Newton 95% intervals cover the truth, and how far the fitted
Lorenz model predicts. Then fits Lotka-Volterra to the Hudson's Bay lynx-hare pelts with
standard errors, and trains a universal differential equation.

Quick mode: Lotka-Volterra (noise-free and one seed) and the lynx-hare fit. Full mode: all
three systems with 5 seeds, the Lorenz horizon, the UDE.
"""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from ..plot import pyplot, savefig
from . import recovery_systems as R

NAME = "recovery"
ORDER = 20
SEEDS = (0, 1, 2, 3, 4)


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


def _fig_fits(systems, arts, out_dir):
    plt = pyplot()
    fig, axes = plt.subplots(len(systems), 2, figsize=(11, 3.2 * len(systems)), squeeze=False)
    for row, system in zip(axes, systems, strict=True):
        data, loss, res = arts[system.name]["first"]
        ts = system.ts
        fine = np.linspace(ts[0], ts[-1], 1000)
        pred = np.asarray(loss.predict(res.params, jnp.asarray(fine)))
        for j in range(data.shape[1]):
            row[0].plot(ts, data[:, j], ".", ms=3, color=f"C{j}", alpha=0.6)
            row[0].plot(fine, pred[:, j], "-", color=f"C{j}", label=f"component {j}")
        row[0].set_title(f"{system.name}: fit (seed 0) vs noisy data")
        row[0].set_xlabel("t")
        if system.name == "stuart_landau":
            row[1].plot(pred[:, 1] * np.cos(pred[:, 0]), pred[:, 1] * np.sin(pred[:, 0]), "-")
            row[1].plot(data[:, 1] * np.cos(data[:, 0]), data[:, 1] * np.sin(data[:, 0]), ".",
                        ms=3)
            row[1].set_xlabel("R cos ψ")
            row[1].set_ylabel("R sin ψ")
        else:
            k = 2 if data.shape[1] == 3 else 1
            row[1].plot(pred[:, 0], pred[:, k], "-")
            row[1].plot(data[:, 0], data[:, k], ".", ms=3)
            row[1].set_xlabel("x")
            row[1].set_ylabel("z" if k == 2 else "y")
        row[1].set_title("phase portrait")
    savefig(fig, out_dir / "fit_vs_data.png")


def _fig_validation(systems, arts, out_dir):
    plt = pyplot()
    val = [s for s in systems if s.validation_y0 is not None]
    metrics = {}
    if not val:
        return metrics
    fig, axes = plt.subplots(1, len(val), figsize=(5.5 * len(val), 3.5), squeeze=False)
    for ax, system in zip(axes[0], val, strict=True):
        _, _, res = arts[system.name]["first"]
        ts = np.linspace(0.0, system.validation_t1, 600)
        y0 = np.asarray(system.validation_y0)
        d = len(y0)
        true = R.reference_solve(system, y0, np.asarray(system.truth)[d:], ts)
        fitted = R.reference_solve(system, y0, np.asarray(res.params)[d:], ts)
        for j in range(d):
            ax.plot(ts, true[:, j], "-", color=f"C{j}", label=f"truth {j}")
            ax.plot(ts, fitted[:, j], "--", color=f"C{j}", label=f"fitted {j}")
        ax.set_title(f"{system.name}: new initial state {tuple(np.round(y0, 3))}")
        ax.legend(fontsize=7)
        metrics[system.name] = float(np.max(np.abs(fitted - true)))
    savefig(fig, out_dir / "validation.png")
    return metrics


def _fig_losses(systems, arts, out_dir):
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for system in systems:
        res = arts[system.name]["first"][2]
        ax.semilogy(np.maximum(res.history, 1e-300), label=f"{system.name} (seed 0)")
        res0 = arts[system.name]["noise_free"]
        ax.semilogy(np.maximum(res0.history, 1e-300), ":", label=f"{system.name} (noise-free)")
    ax.set_xlabel("iteration (all phases)")
    ax.set_ylabel("loss")
    ax.legend(fontsize=7)
    savefig(fig, out_dir / "loss_curves.png")


def _lorenz_horizon(system, arts, out_dir):
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
    ax.set_xlabel("t")
    ax.set_ylabel("x")
    ax.legend(fontsize=7, loc="lower left")
    savefig(fig, out_dir / "lorenz_extrapolation.png")
    return h_clean, h_noisy


def _lynx_hare(out_dir, progress):
    loss, res, report = R.fit_lynx_hare(progress=progress)
    plt = pyplot()
    years = np.asarray(report["years"])
    fine = np.linspace(0.0, years[-1] - years[0], 400)
    pred = np.asarray(loss.predict(res.params, jnp.asarray(fine)))
    fig, ax = plt.subplots(figsize=(7, 3.8))
    for j, (label, marker) in enumerate((("hare", "o"), ("lynx", "s"))):
        ax.plot(years, np.asarray(loss.data)[:, j], marker, color=f"C{j}", ms=4, label=label)
        ax.plot(years[0] + fine, pred[:, j], "-", color=f"C{j}")
    ax.set_xlabel("year")
    ax.set_ylabel("pelts (thousands)")
    ax.set_title("Lotka-Volterra fitted to the Hudson's Bay pelts (log-space least squares)")
    ax.legend()
    savefig(fig, out_dir / "lynx_hare.png")
    return report


def _ude(out_dir, quick, progress):
    from . import recovery_ude as U

    system = R.SYSTEMS["lotka_volterra"]
    t1 = 5.0 if quick else 10.0
    ts = system.ts[system.ts <= t1 + 1e-9]
    data = R.make_data(system, None)[: len(ts)]
    field, res = U.train_ude(ts, data, system.truth[:2], quick=quick, progress=progress)
    err, learned, true = U.interaction_error(field, res.params, data)
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    for j, (ax, label) in enumerate(zip(axes, ("U₁ vs −βxy", "U₂ vs γxy"), strict=True)):
        ax.plot(ts, true[:, j], "k-", label="true term on the data")
        ax.plot(ts, learned[:, j], "C3--", label="learned network")
        ax.set_title(f"{label} (rel. L2 error {err[j]:.3f})")
        ax.set_xlabel("t")
        ax.legend(fontsize=7)
    savefig(fig, out_dir / "ude_terms.png")
    return dict(rel_l2_error=err.tolist(), loss=res.loss, iterations=int(len(res.history)),
                t1=t1, status=res.status.name.lower(), wall_time_s=res.wall_time)


def run(out_dir: Path, quick: bool) -> dict:
    """Run the fits, write the figures into `out_dir`, return the metrics."""
    jax.config.update("jax_enable_x64", True)
    out_dir = Path(out_dir)
    progress = True
    names = ("lotka_volterra",) if quick else tuple(R.SYSTEMS)
    seeds = SEEDS[:1] if quick else SEEDS
    systems = [R.SYSTEMS[n] for n in names]
    metrics, arts = {"systems": {}}, {}
    for system in systems:
        metrics["systems"][system.name], arts[system.name] = _system_block(
            system, seeds, quick, progress)
    _fig_fits(systems, arts, out_dir)
    metrics["validation_max_abs_error"] = _fig_validation(systems, arts, out_dir)
    _fig_losses(systems, arts, out_dir)
    if "lorenz" in names:
        h_clean, h_noisy = _lorenz_horizon(R.SYSTEMS["lorenz"], arts["lorenz"], out_dir)
        seeds_h = [R.prediction_horizon(R.SYSTEMS["lorenz"], r["params"])[0]
                   for r in metrics["systems"]["lorenz"]["seeds"].values()]
        metrics["lorenz_horizon"] = dict(
            noise_free=h_clean, seed0=h_noisy, seeds=seeds_h, article=R.ARTICLE_LORENZ_HORIZON,
            threshold=R.HORIZON_THRESHOLD)
    metrics["lynx_hare"] = _lynx_hare(out_dir, progress)
    if not quick:
        metrics["ude"] = _ude(out_dir, quick, progress)
    metrics["acceptance"] = _acceptance(metrics)
    metrics["skipped_in_quick_mode"] = (
        ["stuart_landau", "lorenz", "seeds 1-4", "ude"] if quick else [])
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

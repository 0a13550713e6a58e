"""The reproductions' figures, drawn from small fake inputs: every axes has both labels,
curves are named in a legend, titles carry no NumPy reprs, counting axes have whole-number
ticks, and a quick run's figure says so. Also: the neural-ODE memory measurement sees each
process's own peak."""

from __future__ import annotations

import types

import numpy as np
import pytest

from jode_experiments import plot

pytest.importorskip("matplotlib")


@pytest.fixture
def figures(monkeypatch, tmp_path):
    """Capture every figure the plotting functions save (still saved, into tmp_path)."""
    saved = []
    real = plot.savefig

    def capture(fig, path, quick=False):
        saved.append(fig)
        return real(fig, tmp_path / path.name, quick)

    monkeypatch.setattr(plot, "savefig", capture)
    import jode_experiments.recovery as recovery

    monkeypatch.setattr(recovery, "savefig", capture)
    return saved


def check_figure(fig, quick: bool) -> None:
    for ax in fig.axes:
        if getattr(ax, "_colorbar", None) is not None:
            assert ax.get_ylabel() or ax.get_xlabel(), "colorbar without a label"
            continue
        assert ax.get_xlabel().strip(), f"no xlabel on {ax.get_title()!r}"
        assert ax.get_ylabel().strip(), f"no ylabel on {ax.get_title()!r}"
        titles = [ax.get_title()] + [t.get_text() for t in fig.texts]
        if fig._suptitle is not None:
            titles.append(fig._suptitle.get_text())
        for title in titles:
            assert "np." not in title and "array(" not in title, title
        named = [ln for ln in ax.get_lines() if not ln.get_label().startswith("_")]
        if named:
            assert ax.get_legend() is not None, f"curves without a legend: {ax.get_title()!r}"
    texts = [t.get_text() for t in fig.texts]
    assert (plot.QUICK_LABEL in texts) == quick


def integer_ticks_only(ax, axis="x") -> bool:
    ax.figure.canvas.draw()
    lo, hi = ax.get_xlim() if axis == "x" else ax.get_ylim()
    ticks = ax.get_xticks() if axis == "x" else ax.get_yticks()
    ticks = ticks[(ticks >= lo) & (ticks <= hi)]
    return ticks.size > 0 and bool(np.all(ticks == np.round(ticks)))


@pytest.mark.parametrize("quick", [False, True])
def test_savefig_quick_label(figures, quick, tmp_path):
    fig, ax = plot.pyplot().subplots()
    ax.plot([0, 1], [0, 1], label="a line")
    ax.set(xlabel="t (s)", ylabel="y (m)")
    ax.legend()
    path = plot.savefig(fig, tmp_path / "f.png", quick)
    assert path.exists()
    check_figure(fig, quick)


def test_fmt_is_for_people():
    assert plot.fmt(np.asarray([2.0, 0.5])) == "(2, 0.5)"
    assert plot.fmt(np.float64(2.0)) == "2"
    assert plot.fmt(np.float32(1.0 / 3.0), 3) == "0.333"


# ------------------------------------------------------------------------------ solver


def test_phase_portraits(figures, tmp_path):
    from jode_experiments import solver_demo

    t = np.linspace(0, 6, 50)
    lv = np.stack([1 + 0.5 * np.cos(t), 1 + 0.5 * np.sin(t)], 1)
    lz = np.stack([10 * np.sin(t), np.cos(t), 25 + 10 * np.cos(t)], 1)
    solver_demo.phase_portraits_figure(lv, lz, tmp_path, quick=True)
    (fig,) = figures
    check_figure(fig, quick=True)
    assert "Lorenz" in fig.axes[1].get_title()


# ---------------------------------------------------------------------------- recovery


def _fake_fit(system_name, n_hist=30):
    from jode_experiments import recovery_systems as R

    system = R.SYSTEMS[system_name]
    d = system._dim
    ts = system.ts
    data = np.abs(np.sin(ts[:, None] + np.arange(d)))
    loss = types.SimpleNamespace(
        predict=lambda params, t: np.abs(np.sin(np.asarray(t)[:, None] + np.arange(d))),
        data=data,
    )
    res = types.SimpleNamespace(params=np.asarray(system.truth),
                                history=np.geomspace(1.0, 1e-6, n_hist))
    return system, dict(first=(data, loss, res), noise_free=res)


def test_recovery_fits_losses_validation(figures, tmp_path):
    from jode_experiments import recovery

    systems, arts = [], {}
    for name in ("lotka_volterra", "stuart_landau", "lorenz"):
        system, art = _fake_fit(name)
        systems.append(system)
        arts[name] = art
    recovery._fig_fits(systems, arts, tmp_path, quick=True)
    recovery._fig_losses(systems, arts, tmp_path, quick=True)
    ts = np.linspace(0, 10, 40)
    true = np.stack([np.sin(ts), np.cos(ts)], 1)
    recovery.validation_figure(
        [("lotka_volterra", np.asarray([np.float64(2.0), np.float64(0.5)]), ts, true, true)],
        tmp_path, quick=False)
    fits, losses, validation = figures
    check_figure(fits, quick=True)
    check_figure(losses, quick=True)
    check_figure(validation, quick=False)
    assert integer_ticks_only(losses.axes[0], "x")
    title = validation.axes[0].get_title()
    assert "(2, 0.5)" in title
    labels = [t.get_text() for t in fits.axes[0].get_legend().get_texts()]
    assert any("prey" in lab for lab in labels) and any("predator" in lab for lab in labels)


def test_lorenz_horizon(figures, tmp_path, monkeypatch):
    from jode_experiments import recovery
    from jode_experiments import recovery_systems as R

    ts = np.linspace(0, 30, 300)
    y = np.stack([np.sin(ts)] * 3, 1)
    monkeypatch.setattr(R, "prediction_horizon", lambda system, params: (20.0, ts, y, y))
    system, art = _fake_fit("lorenz")
    recovery._lorenz_horizon(system, art, tmp_path, quick=True)
    check_figure(figures[0], quick=True)


def test_lynx_hare(figures, tmp_path):
    from jode_experiments import recovery

    years = np.arange(1900, 1921, dtype=float)
    data = np.stack([30 + 20 * np.sin(years), 20 + 10 * np.cos(years)], 1)
    fine = np.linspace(1900, 1920, 200)
    pred = np.stack([30 + 20 * np.sin(fine), 20 + 10 * np.cos(fine)], 1)
    recovery.lynx_hare_figure(years, data, fine, pred, tmp_path, quick=False)
    (fig,) = figures
    check_figure(fig, quick=False)
    assert integer_ticks_only(fig.axes[0], "x")


def test_ude_terms(figures, tmp_path):
    from jode_experiments import recovery
    from jode_experiments import recovery_systems as R

    ts = R.SYSTEMS["lotka_volterra"].ts
    clean = np.stack([1 + 0.5 * np.sin(ts), 1 + 0.5 * np.cos(ts)], 1)
    terms = np.stack([-clean[:, 0] * clean[:, 1], clean[:, 0] * clean[:, 1]], 1)
    fake_u = types.SimpleNamespace(learned_terms=lambda field, params, y: terms * 1.01,
                                   true_terms=lambda y: terms)
    art = dict(train=ts <= 3.0, loss=types.SimpleNamespace(predict=lambda p, t: np.stack(
        [np.ones(len(t)), np.ones(len(t))], 1)), res=types.SimpleNamespace(params=None),
        data=clean, clean=clean, field=None)
    recovery._fig_ude(fake_u, {"noise-free": art}, tmp_path, quick=True)
    check_figure(figures[0], quick=True)


# -------------------------------------------------------------------------- neural ODE


def test_neural_ode_figures(figures, tmp_path):
    from jode_experiments import neural_ode as N

    N.tolerance_figure([{"tol": 1e-1, "nfe": 14, "accuracy": 0.9},
                        {"tol": 1e-4, "nfe": 38, "accuracy": 0.95}], tmp_path, quick=True)
    N.nfe_figure([20, 26, 26, 32, 38, 38, 44], [40, 52, 52, 64, 70, 76, 80], tmp_path)
    rows = {a: [dict(n_steps=n, temp_mb=t, peak_rss_mb=300 + t, baseline_rss_mb=290.0)
                for n, t in zip((10, 100), ts, strict=True)]
            for a, ts in (("direct", (3.0, 30.0)), ("backsolve", (0.4, 0.4)))}
    N.memory_figure(rows, tmp_path, quick=True)
    n = 12
    spiral = np.stack([np.cos(np.linspace(0, 6, n)), np.sin(np.linspace(0, 6, n))], -1)
    batch = np.stack([spiral, spiral])
    N.latent_figure(dict(half=6, clean=batch, ys=batch, latent=batch, rnn=batch), tmp_path)
    axis = np.linspace(-4, 4, 9)
    density = np.exp(-(axis[:, None] ** 2 + axis[None] ** 2))
    N.cnf_panels_figure({"two_moons": (axis, density, np.zeros((20, 2)))}, tmp_path, quick=True)
    tol, nfe, memory, latent, cnf = figures
    for fig, quick in ((tol, True), (nfe, False), (memory, True), (latent, False), (cnf, True)):
        check_figure(fig, quick)
    assert integer_ticks_only(nfe.axes[0], "x")
    assert integer_ticks_only(memory.axes[0], "x")


# ----------------------------------------------------------------------- ode-optimizer


def test_optimizer_paths(figures, tmp_path):
    from jode_experiments import ode_optimizer as O

    path = np.stack([np.linspace(-1.5, 0.09, 10), np.linspace(-0.8, -0.71, 10)], 1)
    O.path_figure(tmp_path, {"camel": {"Adam": path, "flow (Bosh3)": path[::-1]}}, quick=True)
    (fig,) = figures
    check_figure(fig, quick=True)


def test_optimizer_path_gif(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    from jode_experiments import ode_optimizer as O

    closed = []
    real_close = plt.close
    monkeypatch.setattr(plt, "close", lambda fig=None: (closed.append(fig), real_close(fig)))
    path = np.stack([np.linspace(-1.5, 0.09, 4), np.linspace(-0.8, -0.71, 4)], 1)
    gif = O.path_gif(tmp_path, "camel", {"Adam": path}, frames=2, quick=True)
    assert gif.exists() and gif.stat().st_size > 0
    (fig,) = [f for f in closed if f is not None]
    check_figure(fig, quick=True)


# --------------------------------------------------------------------------------- deq


def test_deq_figures(figures, tmp_path):
    from jode_experiments import deq

    rows = {"Anderson": dict(residuals=list(np.geomspace(1, 1e-14, 9)), steps=8),
            "ODE": dict(residuals=list(np.geomspace(1, 1e-12, 30)), steps=29)}
    deq.cos_figure(rows, tmp_path, quick=True)
    x = np.linspace(-1, 1, 9)
    deq.linear_figure(x, 2 * x, tmp_path)
    deq.digits_figure({"DEQ (Anderson)": [1.0, 0.5, 0.3], "explicit MLP": [1.1, 0.6, 0.2]},
                      tmp_path, quick=True)
    deq.memory_figure([10, 100], [2e6, 2.1e6], tmp_path)
    cos, linear, digits, memory = figures
    for fig, quick in ((cos, True), (linear, False), (digits, True), (memory, False)):
        check_figure(fig, quick)
    assert integer_ticks_only(digits.axes[0], "x")
    assert integer_ticks_only(cos.axes[1], "x")


# ------------------------------------------------------------------------------- trial


def _fake_trial(dim, title, n_out=1):
    def exact(x):
        x = np.asarray(x)
        return np.sin(x.sum(-1)) if dim == 2 else np.repeat(np.sin(x)[:, None], n_out, 1).squeeze()

    problem = types.SimpleNamespace(
        problem=types.SimpleNamespace(dim=dim, lower=(0.0,) * dim, upper=(1.0,) * dim),
        exact=exact, title=title)
    solution = types.SimpleNamespace(evaluate=lambda x: exact(x) + 1e-7)
    return dict(problem=problem, solution=solution, config=dict(points=10))


def test_trial_figures(figures, tmp_path):
    from jode_experiments import trial

    results = {"ode1": _fake_trial(1, "Problem 1"), "ode4": _fake_trial(1, "Problem 4", 2),
               "pde5": _fake_trial(2, "Problem 5")}
    trial._plot_odes(results, tmp_path, quick=True)
    trial._plot_pdes(results, tmp_path)
    odes, pdes = figures
    check_figure(odes, quick=True)
    check_figure(pdes, quick=False)


# ----------------------------------------------------------------------- memory probe


def test_memory_direct_grows_backsolve_flat():
    """XLA's scratch memory for one gradient step: direct (stores checkpointed segments,
    O(sqrt N)) grows with the step count, backsolve (Chen et al. 2018, §2) stays flat."""
    from jode_experiments._neural_ode_memory import measure

    temp = {(a, n): measure(a, n, batch=16, width=16)["temp_mb"]
            for a in ("direct", "backsolve") for n in (10, 1000)}
    assert temp["direct", 1000] / temp["direct", 10] > 2.0  # sqrt(100) = 10 at most
    assert temp["backsolve", 1000] / temp["backsolve", 10] < 1.1


def test_memory_child_reports_its_own_peak():
    """The child process's peak is its own: a parent holding 400 MB more does not raise it
    (getrusage's ru_maxrss, inherited across fork/exec on Linux, would)."""
    from jode_experiments._neural_ode_memory import _own_peak_rss_mb, measure_in_subprocess

    ballast = np.ones(400 * 2**20 // 8)  # touched: resident in this (parent) process
    parent_peak = _own_peak_rss_mb()
    row = measure_in_subprocess("direct", 10, batch=16, width=16)
    del ballast
    assert row["baseline_rss_mb"] <= row["peak_rss_mb"] < parent_peak - 200.0


def test_memory_scaling_ratios_and_figure(figures, tmp_path, monkeypatch):
    """memory_scaling's ratios from (fake) per-process rows: last over first step count."""
    from jode_experiments import neural_ode as N

    def fake(adjoint, n, batch, width):
        temp = 0.3 * n if adjoint == "direct" else 0.4
        return dict(adjoint=adjoint, n_steps=n, temp_mb=temp, peak_rss_mb=300.0 + temp,
                    baseline_rss_mb=290.0)

    monkeypatch.setattr(N, "measure_in_subprocess", fake)
    out = N.memory_scaling((10, 100), (8, 8), tmp_path, quick=True, progress=False)
    assert out["direct_ratio"] == pytest.approx(10.0)
    assert out["backsolve_ratio"] == pytest.approx(1.0)
    assert out["steps_ratio"] == 10
    check_figure(figures[0], quick=True)

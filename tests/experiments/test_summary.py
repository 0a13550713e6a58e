"""`results/summary.md`: each target's headline figures against its targets, from every
metrics.json under the results folder; missing figures read "—" instead of failing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest

from jode_experiments import TARGETS, summary
from jode_experiments.summary import HEADLINES, MISSING, Ref, evaluate, render, write_summary

REPO = Path(__file__).resolve().parents[2]


def _write(results: Path, name: str, metrics) -> None:
    folder = results / name
    folder.mkdir(parents=True, exist_ok=True)
    text = metrics if isinstance(metrics, str) else json.dumps(metrics)
    (folder / "metrics.json").write_text(text)


def _table(text: str, name: str) -> dict:
    """label -> (measured, target, status) of target `name`'s table in summary.md."""
    section = text.split(f"## {name}\n", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        if line.startswith("| ") and not line.startswith("| figure"):
            cells = [c.strip().replace("\\|", "|")
                     for c in line.strip("|").split(" | ")]
            rows[cells[0]] = tuple(cells[1:4])
    return rows


def _rows(**overrides):
    base = dict(target=None, comparison=None, source="test", flag=None)
    return dict(base, **overrides)


def test_every_target_has_headlines_and_every_row_is_well_formed():
    assert set(HEADLINES) == set(TARGETS)
    for name, rows in HEADLINES.items():
        assert rows, name
        for row in rows:
            assert isinstance(row["key"], tuple) and row["key"], (name, row)
            assert row["label"] and row["source"], (name, row)
            if row["target"] is not None:
                assert row["comparison"] in ("<=", "<", ">=", ">", "=="), (name, row)


def test_met_missed_and_missing_on_synthetic_metrics():
    metrics = {"quick": False, "a": {"err": 1e-7, "acc": 0.97, "flag": True},
               "ref": {"err": 2e-7}}
    met = evaluate(_rows(key=("a", "err"), label="err", target=1e-6, comparison="<="),
                   metrics)
    assert (met["value"], met["target"], met["status"]) == ("1.00e-07", "≤ 1.00e-06", "met")
    missed = evaluate(_rows(key=("a", "acc"), label="acc", target=0.985, comparison=">="),
                      metrics)
    assert (missed["value"], missed["status"]) == ("0.97", "missed")
    flag = evaluate(_rows(key=("a", "flag"), label="f", target=True, comparison="=="), metrics)
    assert (flag["value"], flag["target"], flag["status"]) == ("yes", "yes", "met")
    ref = evaluate(_rows(key=("a", "err"), label="r", target=Ref(("ref", "err"), 1.5, "peer's"),
                         comparison="<="), metrics)
    assert ref["status"] == "met" and ref["target"] == "≤ 1.5 × peer's (3.00e-07)"
    ref_missed = evaluate(_rows(key=("ref", "err"), label="r",
                                target=Ref(("a", "err")), comparison="<"), metrics)
    assert ref_missed["status"] == "missed"
    # Missing figure, missing reference, NaN, a wrong type on the path: "—", never an error.
    for key in (("a", "nope"), ("nope", "err"), ("a", "err", "deeper"), ("nan",)):
        r = evaluate(_rows(key=key, label="m", target=1.0, comparison="<="),
                     dict(metrics, nan=float("nan")))
        assert (r["value"], r["status"]) == (MISSING, "not measured"), key
    no_ref = evaluate(_rows(key=("a", "err"), label="r", target=Ref(("ref", "nope")),
                            comparison="<"), metrics)
    assert no_ref["status"].startswith("not measured") and MISSING in no_ref["target"]
    reported = evaluate(_rows(key=("a", "acc"), label="h"), metrics)
    assert (reported["value"], reported["status"]) == ("0.97", "reported")


def test_quick_mode_missing_figures_and_flags_it_cannot_meet():
    metrics = {"quick": True, "acc": 0.6, "ok": 0.99,
               "quick_cannot_meet": [{"flag": "acc_ge_0.985", "reason": "4 epochs"}]}
    missing = evaluate(_rows(key=("other",), label="x", target=1.0, comparison="<="), metrics)
    assert (missing["value"], missing["status"]) == (MISSING, "not measured in quick mode")
    cannot = evaluate(_rows(key=("acc",), label="a", target=0.985, comparison=">=",
                            flag="acc_ge_0.985"), metrics)
    assert cannot["status"] == "missed (quick configuration cannot meet it)"
    lucky = evaluate(_rows(key=("ok",), label="a", target=0.985, comparison=">=",
                           flag="acc_ge_0.985"), metrics)
    assert lucky["status"] == "met, but not conclusive in quick mode"
    # A flag the quick run can meet is judged as in a full run.
    plain = evaluate(_rows(key=("acc",), label="a", target=0.985, comparison=">=",
                           flag="another_flag"), metrics)
    assert plain["status"] == "missed"


def test_summary_file_covers_every_target_folder(tmp_path):
    # trial: full run, one problem met, one missed, the others missing.
    _write(tmp_path, "trial", {
        "quick": False, "wall_time_s": 12.0,
        "problems": {"ode1": {"fine_grid": 5e-8}, "ode4": {"fine_grid": 1.0e-5}},
        "acceptance": {"beats_euler_rk4_on_ivps": True}})
    # deq: quick, the digits flag it cannot meet, memory met.
    _write(tmp_path, "deq", {
        "quick": True, "digits_deq_accuracy": 0.95, "memory_ratio_10x_budget": 1.0,
        "quick_cannot_meet": [{"flag": "digits_target_met", "reason": "3 epochs"}]})
    _write(tmp_path, "solver", "{ truncated")  # unreadable: reported, not raised
    _write(tmp_path, "mystery", {"quick": False, "x": 1})  # a target without headlines
    (tmp_path / "recovery.incomplete").mkdir()
    (tmp_path / ".neural-ode.running-abc").mkdir()  # a run in progress: ignored

    path = write_summary(tmp_path)
    assert path == tmp_path / "summary.md"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".summary")) == []
    text = path.read_text()
    # Targets in run order, then unknown ones.
    order = [text.index(f"## {n}\n") for n in ("solver", "trial", "deq", "mystery")]
    assert order == sorted(order)
    assert "## neural-ode" not in text and "## recovery\n" not in text
    assert "`recovery.incomplete`" in text
    assert "could not be read" in text.split("## solver\n")[1].split("\n## ")[0]
    assert "No headline figures" in text.split("## mystery\n")[1]

    trial = _table(text, "trial")
    assert trial["Problem 1: max |ψ_t − ψ_exact|, 10x finer grid"] == (
        "5.00e-08", "≤ 1.00e-06", "met")
    assert trial["Problem 4 (a system of two ODEs) on [0, 3]: max |ψ_t − ψ_exact|, "
                 "10x finer grid"][2] == "missed"
    assert trial["Problem 7 (Neumann edge): max |ψ_t − ψ_exact|, 10x finer grid"] == (
        MISSING, "≤ 1.00e-05", "not measured")
    assert "full configuration" in text.split("## trial\n")[1].split("\n## ")[0]

    deq = _table(text, "deq")
    assert deq["DEQ (Anderson) test accuracy on the digits split"] == (
        "0.95", "≥ 0.97", "missed (quick configuration cannot meet it)")
    assert deq["training-step memory, 10x forward iteration budget / 1x"][2] == "met"
    assert deq["cos z = z: every fixed-point solver converged to ≤ 1e-12"] == (
        MISSING, "yes", "not measured in quick mode")
    assert "`digits_target_met`: 3 epochs" in text
    # Every table line has the same number of cells (a "|" in a label is escaped).
    for line in text.splitlines():
        if line.startswith("| ") or line.startswith("|---"):
            assert line.replace("\\|", "").count("|") == 6, line


def test_empty_results_folder(tmp_path):
    assert "No target has written metrics.json" in render(tmp_path)
    assert "No target has written metrics.json" in render(tmp_path / "absent")


def _fake_target(name: str, interrupt: bool = False):
    module = types.ModuleType(f"fake_{name}")
    module.NAME = name

    def run(out_dir: Path, quick: bool) -> dict:
        if interrupt:
            raise KeyboardInterrupt
        return {"value": 1.5}

    module.run = run
    return module


def test_reproduce_writes_the_summary_of_all_targets_present(tmp_path, monkeypatch):
    import jode_experiments

    modules = {}
    monkeypatch.setattr(jode_experiments, "TARGETS", {})
    monkeypatch.setattr(jode_experiments, "load", lambda name: modules[name])
    monkeypatch.setitem(HEADLINES, "fake", [_rows(key=("value",), label="fake value",
                                                  target=2.0, comparison="<=")])
    for name in ("fake", "other"):
        modules[name] = _fake_target(name)
        jode_experiments.TARGETS[name] = (name, "fake target")
    from jode_experiments import cli

    cli.reproduce(["other"], quick=True, results=tmp_path)
    cli.reproduce(["fake"], quick=False, results=tmp_path)
    text = (tmp_path / "summary.md").read_text()
    assert "## other" in text  # run earlier, still listed
    assert _table(text, "fake")["fake value"] == ("1.5", "≤ 2", "met")
    # Interrupted: the summary is still rewritten from what is there.
    modules["fake"] = _fake_target("fake", interrupt=True)
    (tmp_path / "summary.md").unlink()
    with pytest.raises(KeyboardInterrupt):
        cli.reproduce(["fake"], quick=True, results=tmp_path)
    assert "## fake" in (tmp_path / "summary.md").read_text()


def test_summary_error_never_hides_the_run(tmp_path, monkeypatch, capsys):
    from jode_experiments import cli

    def broken(results):
        raise RuntimeError("boom")

    monkeypatch.setattr(summary, "write_summary", broken)
    cli._write_summary(tmp_path)
    assert "could not write" in capsys.readouterr().err


def test_real_quick_solver_target(tmp_path):
    """`jode reproduce solver --quick` (the fastest target) ends with a summary whose solver
    table is filled from the real metrics.json."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    out = subprocess.run(
        [sys.executable, "-m", "jode_experiments.cli", "reproduce", "solver", "--quick",
         "--results", str(tmp_path)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    text = (tmp_path / "summary.md").read_text()
    rows = _table(text, "solver")
    assert len(rows) == len(HEADLINES["solver"])
    for label, (value, _, status) in rows.items():
        assert value != MISSING, label
        assert status == "met", (label, value, status)
    assert "quick configuration" in text


def test_trial_reports_problem_4_over_seeds_beside_its_seed(tmp_path, monkeypatch):
    """A full `jode reproduce trial` keeps its own seed's Problem 4 error and adds the
    recorded median over seeds 0-4, which the summary judges against 1e-6."""
    import statistics

    from jode_experiments import trial

    over = trial.ODE4_OVER_SEEDS
    assert over["seeds"] == [0, 1, 2, 3, 4] and len(over["fine_grid"]) == 5
    assert over["median_fine_grid"] == statistics.median(over["fine_grid"])
    assert (over["min_fine_grid"], over["max_fine_grid"]) == (min(over["fine_grid"]),
                                                              max(over["fine_grid"]))
    assert over["seeds_le_1e_6"] == sum(e <= 1e-6 for e in over["fine_grid"])

    class Report:  # what trial.run reads of a TrainReport
        loss, time_s = 1e-18, 1.0

        def as_dict(self):
            return {}

    def fake_train_one(pp, config, steps):
        return None, Report(), dict(train_grid=7e-7, fine_grid=7e-7, outside=1e-4,
                                    conditions=0.0)

    monkeypatch.setattr(trial, "FULL", {"ode4": trial.FULL["ode4"]})
    monkeypatch.setattr(trial, "train_one", fake_train_one)
    monkeypatch.setattr(trial, "baseline_errors", lambda pp, n: {"euler": 7.0, "rk4": 6e-6})
    monkeypatch.setattr(trial, "_plot_odes", lambda *a: None)
    monkeypatch.setattr(trial, "_plot_pdes", lambda *a: None)
    metrics = trial.run(tmp_path, quick=False)
    ode4 = metrics["problems"]["ode4"]
    assert ode4["fine_grid"] == 7e-7 and ode4["seed"] == trial.FULL["ode4"]["seed"]
    assert ode4["over_seeds"]["median_fine_grid"] == over["median_fine_grid"]
    assert "trial.md" in ode4["over_seeds"]["source"]
    assert metrics["acceptance"]["ode4_median_over_seeds_le_1e-6"] is True

    _write(tmp_path, "trial", dict(metrics, quick=False))
    rows = _table(render(tmp_path), "trial")
    assert rows["Problem 4: median over seeds 0-4 of the same error (recorded run)"] == (
        "5.09e-07", "≤ 1.00e-06", "met")

"""`jode reproduce`: a target's folder is replaced only when the target completes, and a
results folder that cannot be written is reported before any work."""

from __future__ import annotations

import json
import os
import tempfile
import types
from pathlib import Path

import pytest

import jode_experiments
from jode_experiments import cli


def _fake_target(name: str, *, interrupt_after: int | None = None):
    """A target that writes a figure-like file and three metrics, optionally raising
    KeyboardInterrupt after `interrupt_after` of its files (as Ctrl-C would)."""
    module = types.ModuleType(f"fake_{name}")
    module.NAME = name
    module.calls = 0
    module.QUICK_CANNOT_MEET = {"accuracy_ge_0.99": "4 epochs instead of 60"}

    def run(out_dir: Path, quick: bool) -> dict:
        module.calls += 1
        for i in range(3):
            if interrupt_after is not None and i == interrupt_after:
                raise KeyboardInterrupt
            (Path(out_dir) / f"part{i}.txt").write_text(f"run {module.calls} part {i}\n")
        return {"parts": 3, "value": 1.5}

    module.run = run
    return module


@pytest.fixture
def fake_targets(monkeypatch):
    """Install fake targets in place of the real ones; returns a setter name -> module."""
    modules: dict = {}
    monkeypatch.setattr(jode_experiments, "TARGETS", {})

    def install(module):
        jode_experiments.TARGETS[module.NAME] = (module.NAME, "fake target")
        modules[module.NAME] = module

    monkeypatch.setattr(jode_experiments, "load", lambda name: modules[name])
    return install


def test_complete_run_writes_folder_and_metrics(tmp_path, fake_targets):
    fake_targets(_fake_target("fake"))
    summary = cli.reproduce(["fake"], quick=True, results=tmp_path)
    metrics = json.loads((tmp_path / "fake" / "metrics.json").read_text())
    assert metrics["value"] == 1.5 and metrics["quick"] is True
    assert summary["fake"]["parts"] == 3
    assert metrics["quick_cannot_meet"] == [
        {"flag": "accuracy_ge_0.99", "reason": "4 epochs instead of 60"}
    ]
    assert sorted(p.name for p in (tmp_path / "fake").iterdir()) == [
        "metrics.json", "part0.txt", "part1.txt", "part2.txt"]
    # No temporary folders left beside it; the summary of every target present.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fake", "summary.md"]
    # Permissions as for any folder this process creates (not the temporary folder's 0o700).
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "fake").stat().st_mode & 0o777 == 0o777 & ~umask


def test_interrupted_run_leaves_earlier_complete_folder_intact(tmp_path, fake_targets):
    fake_targets(_fake_target("fake"))
    cli.reproduce(["fake"], quick=False, results=tmp_path)
    before = {p.name: p.read_text() for p in (tmp_path / "fake").iterdir()}
    assert json.loads(before["metrics.json"])["quick"] is False

    fake_targets(_fake_target("fake", interrupt_after=2))
    with pytest.raises(KeyboardInterrupt):
        cli.reproduce(["fake"], quick=True, results=tmp_path)
    after = {p.name: p.read_text() for p in (tmp_path / "fake").iterdir()}
    assert after == before
    # The interrupted run's files are kept apart, never mixed into the complete folder.
    kept = tmp_path / "fake.incomplete"
    assert sorted(p.name for p in kept.iterdir()) == ["part0.txt", "part1.txt"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_completed_rerun_replaces_folder_whole(tmp_path, fake_targets):
    fake_targets(_fake_target("fake"))
    cli.reproduce(["fake"], quick=False, results=tmp_path)
    (tmp_path / "fake" / "stale.png").write_text("from an older version")
    cli.reproduce(["fake"], quick=True, results=tmp_path)
    names = sorted(p.name for p in (tmp_path / "fake").iterdir())
    assert "stale.png" not in names
    assert json.loads((tmp_path / "fake" / "metrics.json").read_text())["quick"] is True
    assert (tmp_path / "fake" / "part0.txt").read_text() == "run 2 part 0\n"


def _unwritable_folder(tmp_path: Path) -> Path:
    """An existing folder this process cannot create files in."""
    if os.geteuid() != 0:
        folder = tmp_path / "readonly"
        folder.mkdir()
        folder.chmod(0o555)
        return folder
    # Permission bits do not stop root: use a read-only file system when there is one.
    for candidate in (Path("/sys"), Path("/proc")):
        try:
            tempfile.mkdtemp(dir=candidate)
        except OSError:
            return candidate
    pytest.skip("no folder here that this (root) process cannot write")


def test_read_only_results_folder_fails_before_any_work(tmp_path, fake_targets):
    module = _fake_target("fake")
    fake_targets(module)
    folder = _unwritable_folder(tmp_path)
    try:
        with pytest.raises(cli.ResultsNotWritableError, match=repr(str(folder))):
            cli.reproduce(["fake"], quick=True, results=folder)
        assert module.calls == 0
    finally:
        if folder.is_relative_to(tmp_path):
            folder.chmod(0o755)


def test_read_only_results_folder_cli_message(tmp_path, fake_targets, capsys):
    fake_targets(_fake_target("fake"))
    folder = _unwritable_folder(tmp_path)
    try:
        assert cli.main(["reproduce", "fake", "--quick", "--results", str(folder)]) == 2
    finally:
        if folder.is_relative_to(tmp_path):
            folder.chmod(0o755)
    err = capsys.readouterr().err
    assert str(folder) in err and "--results" in err


def test_device_placement(monkeypatch):
    # On a CPU-only machine everything runs on the CPU whatever the option.
    import jax

    module = types.ModuleType("fake_gpu_target")
    assert cli.placement(module, quick=False, device="auto")[1] == "cpu"
    # With an accelerator as JAX's default: quick runs and small-step targets go to the host
    # CPU under auto, full network trainings stay on the accelerator, and the options force.
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    small = types.ModuleType("fake_small_target")
    small.DEVICE = "cpu"
    assert cli.placement(module, quick=True, device="auto")[1] == "cpu"
    assert cli.placement(small, quick=False, device="auto")[1] == "cpu"
    assert cli.placement(module, quick=False, device="auto")[1] == "gpu"
    assert cli.placement(module, quick=True, device="accelerator")[1] == "gpu"
    assert cli.placement(module, quick=False, device="cpu")[1] == "cpu"
    where, platform = cli.placement(small, quick=False, device="auto")
    with where:
        assert jax.numpy.zeros(2).devices() == {jax.devices("cpu")[0]}
    for name in ("solver", "recovery", "trial", "ode-optimizer"):
        assert getattr(jode_experiments.load(name), "DEVICE", None) == "cpu", name

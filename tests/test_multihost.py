"""`scripts/sweep_multihost.py`: a `jode.sweep` over two localhost processes
(`jax.distributed` with gloo's CPU collectives) gives every process every result, bitwise
equal to the same sweep in one process (the reference: one device, all lanes in one vmap)."""

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "sweep_multihost.py"


def _gloo_available():
    try:
        from jax._src.lib import _jax
    except ImportError:  # a jaxlib without the module: try the run itself
        return True
    return hasattr(_jax, "make_gloo_tcp_collectives")


def _run(args):
    return subprocess.Popen([sys.executable, str(SCRIPT), *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _wait(proc, timeout=240):
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"{SCRIPT.name} did not finish in {timeout} s:\n{err[-2000:]}")
    return proc.returncode, out, err


@pytest.mark.skipif(not _gloo_available(),
                    reason="this jaxlib has no gloo CPU collectives (make_gloo_tcp_collectives)")
def test_two_process_sweep_equals_the_single_process_sweep_bitwise(tmp_path):
    multi = _run(["--num-processes", "2", "--n", "64", "--out", str(tmp_path / "multi")])
    single = _run(["--num-processes", "1", "--n", "64", "--out", str(tmp_path / "single")])
    code_m, _, err_m = _wait(multi)
    code_s, _, err_s = _wait(single)
    if code_m and "gloo" in err_m.lower() and "unimplemented" in err_m.lower():
        pytest.skip(f"gloo collectives unavailable: {err_m.strip().splitlines()[-1]}")
    assert code_s == 0, err_s[-3000:]
    assert code_m == 0, err_m[-3000:]
    ref = np.load(tmp_path / "single" / "process0.npz")
    assert int(ref["processes"]) == 1 and int(ref["devices"]) == 1
    assert ref["final"].shape == (64, 2) and np.all(ref["status"] == 0)
    for pid in (0, 1):
        got = np.load(tmp_path / "multi" / f"process{pid}.npz")
        assert int(got["processes"]) == 2 and int(got["devices"]) == 2
        np.testing.assert_array_equal(got["thetas"], ref["thetas"])
        np.testing.assert_array_equal(got["status"], ref["status"])
        assert np.array_equal(got["final"], ref["final"]), (
            f"process {pid}: max difference {np.max(np.abs(got['final'] - ref['final']))}")
    # every lane against the conserved quantity of Lotka-Volterra (Volterra 1926),
    # V = γx − δ ln x + βy − α ln y with (δ, γ) = (3, 1): the solve's own accuracy
    a, b = ref["thetas"].T
    x, y = ref["final"].T

    def V(x, y):
        return x - 3.0 * np.log(x) + b * y - a * np.log(y)

    np.testing.assert_allclose(V(x, y), V(1.0, 1.0), rtol=1e-6)


def _load_script():
    spec = importlib.util.spec_from_file_location("sweep_multihost", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("argv, message", [
    (["--process-id", "0"], "--coordinator"),
    (["--num-processes", "2", "--process-id", "2", "--coordinator", "h:1"], "0..1"),
    (["--num-processes", "0"], ">= 1"),
])
def test_launcher_arguments_are_checked(argv, message, capsys):
    module = _load_script()
    with pytest.raises(SystemExit):
        module._parse(argv)
    assert message in capsys.readouterr().err

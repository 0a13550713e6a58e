"""Toy data: spirals on r = a + bθ with the stated noise and irregular increasing times;
the densities' support and moments; a tiny MNIST IDX set read back exactly."""

from __future__ import annotations

import gzip
import struct

import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

from jode_experiments.data import (
    checkerboard,
    eight_gaussians,
    load_mnist,
    sample_density,
    spirals,
    two_moons,
)


def test_spirals_geometry_noise_and_times():
    s = spirals(jr.key(0), n=40, n_obs=30, n_total=120, noise_std=0.3, dtype=jnp.float64)
    assert s.ts.shape == (40, 30) and s.ys.shape == (40, 30, 2)
    np.testing.assert_allclose(s.ts[:, 0], 0.0)
    assert bool(jnp.all(jnp.diff(s.ts, axis=1) > 0))
    gaps = np.diff(np.asarray(s.ts), axis=1)
    assert gaps.std() > 0.2 * gaps.mean()  # irregular sampling
    # Counter-clockwise spirals: |p - (5, 0)| = b θ with θ the grid angle.
    ccw = ~np.asarray(s.clockwise)
    r = np.linalg.norm(np.asarray(s.y_full)[ccw] - np.array([5.0, 0.0]), axis=-1)
    np.testing.assert_allclose(
        r, 0.3 * np.asarray(s.t_full)[None, :].repeat(ccw.sum(), 0), atol=1e-12
    )
    cw = np.asarray(s.clockwise)
    r_cw = np.linalg.norm(np.asarray(s.y_full)[cw] - np.array([-5.0, 0.0]), axis=-1)
    np.testing.assert_allclose(
        r_cw, 0.3 * np.asarray(s.t_full)[::-1][None, :].repeat(cw.sum(), 0), atol=1e-12
    )
    noise = np.asarray(s.ys - s.clean).ravel()
    assert abs(noise.std() - 0.3) < 0.02


def test_densities_support_and_moments():
    key = jr.key(0)
    x = np.asarray(checkerboard(key, 20000, dtype=jnp.float64))
    cell = np.floor(x / 2.0).astype(int)  # 4x4 cells of side 2 on [-4, 4]^2
    assert np.all(np.abs(x) <= 4.0)
    assert np.all((cell[:, 0] + cell[:, 1]) % 2 == 0)  # only the "black" cells
    g = np.asarray(eight_gaussians(key, 40000, dtype=jnp.float64))
    angles = np.round(np.arctan2(g[:, 1], g[:, 0]) / (np.pi / 4)) % 8
    counts = np.bincount(angles.astype(int), minlength=8)
    assert counts.min() > 0.11 * len(g)  # eight equal components
    np.testing.assert_allclose(np.mean(np.linalg.norm(g, axis=1)), 4.0 / 1.414, rtol=0.02)
    m = np.asarray(two_moons(key, 20000, dtype=jnp.float64))
    np.testing.assert_allclose(m.mean(0), 0.0, atol=0.05)
    with pytest.raises(ValueError, match="name must be one of"):
        sample_density("swiss", key, 10)


def _write_idx(path, array, code):
    header = struct.pack(">BBBB", 0, 0, code, array.ndim) + struct.pack(
        ">" + "i" * array.ndim, *array.shape
    )
    with gzip.open(path, "wb") as fh:
        fh.write(header + array.tobytes())


def test_mnist_idx_roundtrip_and_missing_files(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(5, 28, 28), dtype=np.uint8)
    labels = np.array([3, 1, 4, 1, 5], dtype=np.uint8)
    _write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", images, 0x08)
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", labels, 0x08)
    monkeypatch.setenv("JODE_MNIST_DIR", str(tmp_path))
    x, y = load_mnist("test")
    np.testing.assert_array_equal(y, labels)
    np.testing.assert_allclose(x, images.reshape(5, -1) / 255.0, rtol=1e-6)
    with pytest.raises(FileNotFoundError, match="train-images-idx3-ubyte"):
        load_mnist("train")

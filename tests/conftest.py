"""Test configuration: x64 on, strict dtype promotion (silent up-casting is an error), and
XLA:CPU's one-kernel solve loops (`jode.configure_cpu()`, before any computation)."""

import os

os.environ.setdefault("JODE_QUICK", "1")

import jax  # noqa: E402

import jode  # noqa: E402

jode.configure_cpu()
jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_dtype_promotion", "strict")

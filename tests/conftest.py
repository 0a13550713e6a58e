"""Test configuration: x64 on, strict dtype promotion (silent up-casting is an error)."""

import os

os.environ.setdefault("JODE_QUICK", "1")

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_dtype_promotion", "strict")

"""Equinox layers built on jode's solvers (one module per idea)."""

"""Equinox layers built on jode's solvers (one module per idea)."""

from .deq import DEQ as DEQ, DEQClassifier as DEQClassifier, DEQStats as DEQStats, TanhCell as TanhCell  # noqa: E501, I001

"""Equinox layers built on jode's solvers (one module per idea)."""

from .deq import DEQ as DEQ, DEQClassifier as DEQClassifier, DEQStats as DEQStats, TanhCell as TanhCell  # noqa: E501, I001
from .cnf import CNF as CNF
from .latent import LatentODE as LatentODE
from .latent import RNNBaseline as RNNBaseline
from .neural_ode import ConvField as ConvField
from .neural_ode import MLPField as MLPField
from .neural_ode import NeuralODE as NeuralODE
from .neural_ode import ODEBlock as ODEBlock
from .neural_ode import nfe_counts as nfe_counts
from .neural_ode import reset_nfe as reset_nfe

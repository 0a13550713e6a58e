"""Trial-solution networks (Lagaris, Likas & Fotiadis 1998): ODEs, ODE systems, boundary
value problems and PDEs on rectangles, with the conditions satisfied exactly.

    problem = jode.trial.Problem(lambda x, p, dp: dp + p / 5 - jnp.exp(-x / 5) * jnp.cos(x),
                                 jode.trial.InitialValue(0.0, 0.0), (0.0, 2.0))
    solution, report = jode.trial.train(problem, jr.key(0), hidden=10, points=20)
    solution(1.5), solution.evaluate(xs)
"""

from .conditions import Boundary as Boundary
from .conditions import Dirichlet as Dirichlet
from .conditions import InitialValue as InitialValue
from .conditions import Neumann as Neumann
from .problem import Problem as Problem
from .problem import TrialSolution as TrialSolution
from .problem import sigmoid_mlp as sigmoid_mlp
from .train import TrainReport as TrainReport
from .train import TrialWarning as TrialWarning
from .train import default_points as default_points
from .train import grid_points as grid_points
from .train import random_points as random_points
from .train import train as train

"""Fixed points z* = f(z*) and steady states, differentiable by the implicit function theorem.

    sol = jode.fixed_point(f, z0, args, solver=jode.fixed_point.Anderson())
    sol.value, sol.status, sol.steps, sol.residuals

Solvers: `FixedPointIteration` (damped), `Anderson`, `Broyden` (limited memory), `Newton`
(Jacobian-free, GMRES) and `SteadyState` (integrates dz/dt = f(z) - z with `jode.solve`).
Gradients: `ImplicitAdjoint` (a custom VJP solving (I - ∂f/∂z)ᵀ u = g).
"""

from .implicit import ImplicitAdjoint as ImplicitAdjoint
from .ode_route import SteadyState as SteadyState
from .result import FixedPointSolution as FixedPointSolution
from .result import FixedPointStatus as FixedPointStatus
from .solve import fixed_point as fixed_point
from .solve import steady_state as steady_state
from .solvers import AbstractFixedPointSolver as AbstractFixedPointSolver
from .solvers import Anderson as Anderson
from .solvers import Broyden as Broyden
from .solvers import FixedPointIteration as FixedPointIteration
from .solvers import Newton as Newton

SOLVERS = {
    "iteration": FixedPointIteration,
    "anderson": Anderson,
    "broyden": Broyden,
    "newton": Newton,
    "steady_state": SteadyState,
}

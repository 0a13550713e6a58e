"""jode: differential equations for machine-learning research, on JAX.

    sol = jode.solve(f, y0, t0, t1, args=p, solver=jode.Tsit5(), saveat=ts)

Importing jode has no side effects. The workflows built on the solvers are imported on
first use: the functions `jode.fit` (of `jode.fitting`) and `jode.sweep` (of
`jode.sweeping`), and the subpackages `jode.fitting`, `jode.sweeping`, `jode.trial`,
`jode.nn`, `jode.optim`, `jode.models`. On CPU, call `jode.configure_cpu()` before the
first JAX computation for solves compiled into one kernel (see `jode/_cpu.py`).
"""

import importlib as _importlib

from ._cpu import configure_cpu as configure_cpu
from ._cpu import cpu_configured as cpu_configured
from ._results import RESULTS as RESULTS
from .fixed_point import AbstractFixedPointSolver as AbstractFixedPointSolver
from .fixed_point import Anderson as Anderson
from .fixed_point import Broyden as Broyden
from .fixed_point import FixedPointIteration as FixedPointIteration
from .fixed_point import FixedPointSolution as FixedPointSolution
from .fixed_point import FixedPointStatus as FixedPointStatus
from .fixed_point import ImplicitAdjoint as ImplicitAdjoint
from .fixed_point import Newton as Newton
from .fixed_point import SteadyState as SteadyState
from .fixed_point import fixed_point as fixed_point
from .fixed_point import steady_state as steady_state
from .ode.adjoint import AbstractAdjoint as AbstractAdjoint
from .ode.adjoint import BacksolveAdjoint as BacksolveAdjoint
from .ode.adjoint import DirectAdjoint as DirectAdjoint
from .ode.adjoint import ForwardMode as ForwardMode
from .ode.batch import solve_batch as solve_batch
from .ode.control import ConstantStep as ConstantStep
from .ode.control import PIDController as PIDController
from .ode.events import Event as Event
from .ode.explicit import RK4 as RK4
from .ode.explicit import AbstractExplicitRK as AbstractExplicitRK
from .ode.explicit import AbstractSolver as AbstractSolver
from .ode.explicit import Bosh3 as Bosh3
from .ode.explicit import Dopri5 as Dopri5
from .ode.explicit import Dopri8 as Dopri8
from .ode.explicit import Euler as Euler
from .ode.explicit import EulerHeun as EulerHeun
from .ode.explicit import ExplicitRK as ExplicitRK
from .ode.explicit import Heun as Heun
from .ode.explicit import Midpoint as Midpoint
from .ode.explicit import Ralston as Ralston
from .ode.explicit import StepResult as StepResult
from .ode.explicit import Tsit5 as Tsit5
from .ode.fractional import solve_fractional as solve_fractional
from .ode.implicit import ESDIRK as ESDIRK
from .ode.implicit import AbstractESDIRK as AbstractESDIRK
from .ode.implicit import AbstractRosenbrock as AbstractRosenbrock
from .ode.implicit import ImplicitEuler as ImplicitEuler
from .ode.implicit import Kvaerno3 as Kvaerno3
from .ode.implicit import Kvaerno5 as Kvaerno5
from .ode.implicit import Rodas5 as Rodas5
from .ode.implicit import Rosenbrock as Rosenbrock
from .ode.mittag_leffler import mittag_leffler as mittag_leffler
from .ode.solution import Solution as Solution
from .ode.solution import Status as Status
from .ode.solve import SaveAt as SaveAt
from .ode.solve import solve as solve
from .ode.tableaus import ButcherTableau as ButcherTableau
from .ode.tableaus import DIRKTableau as DIRKTableau
from .ode.tableaus import RosenbrockTableau as RosenbrockTableau

__version__ = "0.1.0"

_SUBPACKAGES = ("fitting", "sweeping", "trial", "nn", "optim", "models")
# Entry points that are functions of a lazily loaded module; their names differ from every
# module's, so importing a submodule never replaces them.
_FUNCTIONS = {"fit": "fitting", "sweep": "sweeping"}


def __getattr__(name):
    # Subpackages load lazily: `import jode` stays cheap and imports no optax or networks.
    if name in _SUBPACKAGES:
        return _importlib.import_module(f"{__name__}.{name}")
    if name in _FUNCTIONS:
        function = getattr(_importlib.import_module(f"{__name__}.{_FUNCTIONS[name]}"), name)
        globals()[name] = function
        return function
    raise AttributeError(f"module 'jode' has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), *_SUBPACKAGES, *_FUNCTIONS])

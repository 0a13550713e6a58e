"""Parameter recovery: fit a differential equation's parameters and initial state to data.

`jode.fit(loss, theta0)` (this package's `fit`) minimizes a trajectory loss with stages of
optax optimizers (Adam, then L-BFGS), optionally with a strategy for hard problems
(growing time windows, multiple shooting), batched over initial guesses, with progress,
checkpoints and the Gauss-Newton uncertainty of the estimate.

    loss = jode.fitting.TrajectoryLoss(jode.models.lotka_volterra, ts, data, n_state=2)
    result = jode.fit(loss, theta0, stages=(jode.fitting.LBFGS(steps=300),))
    result.params, result.stderr, result.interval(0.95)

Modules: `loss` (TrajectoryLoss, MultipleShootingLoss), `stages` (Adam, LBFGS, the stage
state machine), `strategies` (GrowingWindows, MultipleShooting), `priors` (Normal,
LogNormal, Flat priors and `Posterior`: MAP fits), `uncertainty` (Gauss-Newton covariance,
`laplace` at a MAP), `checkpoint` (safe .npz checkpoints).
"""

from ._fit import FitResult as FitResult
from ._fit import default_stages as default_stages
from ._fit import fit as fit
from .loss import MultipleShootingLoss as MultipleShootingLoss
from .loss import TrajectoryLoss as TrajectoryLoss
from .loss import check_data as check_data
from .priors import Flat as Flat
from .priors import LogNormal as LogNormal
from .priors import Normal as Normal
from .priors import Posterior as Posterior
from .stages import LBFGS as LBFGS
from .stages import Adam as Adam
from .stages import FitStatus as FitStatus
from .stages import StageState as StageState
from .stages import run_stage as run_stage
from .stages import run_stages as run_stages
from .stages import stage_step as stage_step
from .strategies import GrowingWindows as GrowingWindows
from .strategies import MultipleShooting as MultipleShooting
from .uncertainty import Laplace as Laplace
from .uncertainty import Uncertainty as Uncertainty
from .uncertainty import gauss_newton as gauss_newton
from .uncertainty import jacobian as jacobian
from .uncertainty import laplace as laplace

"""Optimizing by integrating the gradient flow dθ/dt = -∇L(θ) (Owens & Filkin 1989).

opt = jode.optim.gradient_flow()                     # an optax optimizer, no learning rate
res = jode.optim.minimize_by_flow(loss, θ0, args)    # to ‖∇L‖ <= gtol; res.status says
                                                     # if it got there (else a warning)
opt = jode.optim.heavy_ball_flow(damping=1.0)        # θ'' + γθ' + ∇L(θ) = 0 (another ODE)
"""

from ..ode.explicit import EulerHeun as EulerHeun
from .chebyshev import Chebyshev as Chebyshev
from .flow import FlowState as FlowState
from .flow import gradient_flow as gradient_flow
from .heavy_ball import HeavyBallState as HeavyBallState
from .heavy_ball import heavy_ball_flow as heavy_ball_flow
from .minimize import FlowResult as FlowResult
from .minimize import minimize_by_flow as minimize_by_flow
from .ros2 import Ros2 as Ros2
from .ros2 import truncated_cg as truncated_cg

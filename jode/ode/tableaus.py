"""Runge-Kutta methods as data: a validated Butcher tableau and the classic methods.

A method is its tableau (Butcher 2016, *Numerical Methods for ODEs*, §23):

    k_i = f(t + c_i h, y + h Σ_j a_ij k_j),    y_1 = y_0 + h Σ_i b_i k_i,

with an embedded error estimate  e = h Σ_i b_err_i k_i  (b_err = b - b̂) and, where the
method has one, a continuous extension  y(t_0 + θh) = y_0 + h Σ_i k_i Σ_j P_ij θ^(j+1).

`ButcherTableau` checks itself when built: rows of `a` sum to `c`, weights sum to 1, error
weights to 0, and every order condition b·Φ(τ) = 1/γ(τ) over the rooted trees τ up to the
claimed order holds (Hairer, Nørsett & Wanner 1993, *Solving ODEs I*, Thm. II.2.13).
"""

from __future__ import annotations

import dataclasses
import functools
import math

import numpy as np

__all__ = [
    "ButcherTableau",
    "rooted_trees",
    "order_residuals",
    "EULER",
    "MIDPOINT",
    "HEUN",
    "EULER_HEUN",
    "RALSTON",
    "RK4",
    "BOSH3",
    "DOPRI5",
    "TSIT5",
    "DOPRI8",
    "DIRKTableau",
    "RosenbrockTableau",
    "rosenbrock_order_residuals",
    "IMPLICIT_EULER",
    "KVAERNO3",
    "KVAERNO5",
    "RODAS5",
]


# ---------------------------------------------------------------------------------------
# Rooted trees and order conditions
# ---------------------------------------------------------------------------------------


@functools.cache
def rooted_trees(order: int) -> tuple[tuple, ...]:
    """All rooted trees with `order` vertices, each a sorted tuple of its children's trees.

    The single vertex is `()`. Counts are 1, 1, 2, 4, 9, 20, 48, 115 for orders 1..8
    (OEIS A000081).
    """
    if order == 1:
        return ((),)
    trees = set()
    for children in _forests(order - 1, order - 1):
        trees.add(tuple(sorted(children)))
    return tuple(sorted(trees))


@functools.cache
def _forests(total: int, largest: int) -> tuple[tuple, ...]:
    # Multisets of trees whose sizes sum to `total`, sizes non-increasing (to avoid repeats).
    if total == 0:
        return ((),)
    out = []
    for size in range(min(total, largest), 0, -1):
        for tree in rooted_trees(size):
            for rest in _forests(total - size, size):
                if rest and _tree_size(rest[0]) == size and rest[0] < tree:
                    continue
                out.append((tree, *rest))
    return tuple(out)


@functools.cache
def _tree_size(tree: tuple) -> int:
    return 1 + sum(_tree_size(child) for child in tree)


@functools.cache
def _density(tree: tuple) -> int:
    """γ(τ): the tree's size times the densities of its subtrees."""
    return _tree_size(tree) * math.prod(_density(child) for child in tree)


def _elementary_weight(a: np.ndarray, tree: tuple) -> np.ndarray:
    """Φ(τ) as a vector over stages: Φ(•) = 1, Φ([τ_1..τ_m]) = Π_k (A Φ(τ_k))."""
    phi = np.ones(a.shape[0])
    for child in tree:
        phi = phi * (a @ _elementary_weight(a, child))
    return phi


def order_residuals(a: np.ndarray, b: np.ndarray, order: int) -> dict[int, float]:
    """Largest |b·Φ(τ) - 1/γ(τ)| over the trees of each order 1..`order`."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    return {
        p: max(abs(b @ _elementary_weight(a, t) - 1.0 / _density(t)) for t in rooted_trees(p))
        for p in range(1, order + 1)
    }


# ---------------------------------------------------------------------------------------
# The tableau
# ---------------------------------------------------------------------------------------


def _readonly(x) -> np.ndarray | None:
    if x is None:
        return None
    arr = np.array(x, dtype=np.float64)
    arr.setflags(write=False)
    return arr


def _value_key(tableau) -> tuple:
    """The tableau's data as a hashable key: tableaux equal by value compare and hash equal,
    so a solver built twice from the same coefficients hits the same compile cache."""
    out = [type(tableau).__name__]
    for field in dataclasses.fields(tableau):
        value = getattr(tableau, field.name)
        if isinstance(value, np.ndarray):
            out.append((value.shape, value.tobytes()))
        else:
            out.append(value)
    return tuple(out)


class _ValueEq:
    """Equality and hashing by value for the frozen tableau dataclasses (NumPy fields)."""

    def __eq__(self, other):
        if type(other) is not type(self):
            return NotImplemented
        return _value_key(self) == _value_key(other)

    def __hash__(self):
        return hash(_value_key(self))


@dataclasses.dataclass(frozen=True, eq=False)
class ButcherTableau(_ValueEq):
    """An explicit Runge-Kutta method as data.

    Args:
        name: display name.
        a: strictly lower-triangular stage matrix, shape (s, s).
        b: solution weights, shape (s,).
        c: nodes, shape (s,); must equal the row sums of `a`.
        order: classical order p of the solution (checked on all trees up to p).
        b_err: error weights b - b̂ (sum 0), or None for a method without error estimate.
        embedded_order: order q of the embedded solution b̂ (checked); the local error
            estimate is O(h^(q+1)), which sets the step-size controller's exponent.
        interp: continuous-extension matrix P of shape (s, d): y(t0 + θh) = y0 +
            h Σ_i k_i Σ_j P_ij θ^(j+1). None means cubic Hermite interpolation. With extra
            dense-output stages P has s + 1 + e rows: row s weights k_s = f(t + h, y_1),
            rows s + 1 .. s + e the extra stages.
        interp_a: the extra dense-output stages' coefficients, shape (e, s + 1 + e):
            k_{s+m} = f(t + interp_c_m h, y + h Σ_j interp_a_mj k_j), j over the s stages,
            f(t + h, y_1) and the extra stages before it (strictly lower triangular there).
        interp_c: their nodes, shape (e,): the row sums of `interp_a`.
        tol: tolerance for the consistency and order checks.

    A tableau is FSAL ("first same as last") when its last stage is evaluated at
    (t + h, y_1): then that stage is the next step's first and costs nothing.

    Raises:
        ValueError: if the tableau is inconsistent or misses an order condition.
    """

    name: str
    a: np.ndarray
    b: np.ndarray
    c: np.ndarray
    order: int
    b_err: np.ndarray | None = None
    embedded_order: int | None = None
    interp: np.ndarray | None = None
    tol: float = 1e-10
    interp_a: np.ndarray | None = None
    interp_c: np.ndarray | None = None

    def __post_init__(self):
        for field in ("a", "b", "c", "b_err", "interp", "interp_a", "interp_c"):
            object.__setattr__(self, field, _readonly(getattr(self, field)))
        s = self.b.shape[0]
        if self.a.shape != (s, s) or self.c.shape != (s,):
            raise ValueError(
                f"{self.name}: a must be ({s}, {s}) and c ({s},) to match b; got "
                f"a {self.a.shape}, c {self.c.shape}"
            )
        if np.any(np.triu(self.a) != 0):
            raise ValueError(f"{self.name}: a must be strictly lower triangular (explicit)")
        if not np.allclose(self.a.sum(axis=1), self.c, atol=self.tol, rtol=0):
            raise ValueError(f"{self.name}: the rows of a must sum to c")
        residuals = order_residuals(self.a, self.b, self.order)
        bad = {p: r for p, r in residuals.items() if r > self.tol}
        if bad:
            raise ValueError(f"{self.name}: order conditions fail (order: residual) {bad}")
        if self.b_err is not None:
            if self.b_err.shape != (s,) or abs(self.b_err.sum()) > self.tol:
                raise ValueError(f"{self.name}: b_err must have shape ({s},) and sum to 0")
            if self.embedded_order is None:
                raise ValueError(f"{self.name}: give embedded_order with b_err")
            res_hat = order_residuals(self.a, self.b - self.b_err, self.embedded_order)
            bad = {p: r for p, r in res_hat.items() if r > self.tol}
            if bad:
                raise ValueError(f"{self.name}: embedded method misses order {bad}")
        if self.interp is not None:
            extra = 0 if self.interp_c is None else self.interp_c.shape[0]
            rows = s if self.interp_a is None else s + 1 + extra
            if self.interp.shape[0] != rows:
                raise ValueError(f"{self.name}: interp must have {rows} rows")
            if (self.interp_a is None) != (self.interp_c is None):
                raise ValueError(f"{self.name}: give interp_a and interp_c together")
            if self.interp_a is not None:
                if self.interp_a.shape != (extra, rows) or np.any(
                    np.triu(self.interp_a, s + 1) != 0
                ):
                    raise ValueError(
                        f"{self.name}: interp_a must be ({extra}, {rows}), each extra stage "
                        "using only the stages before it"
                    )
                if not np.allclose(self.interp_a.sum(axis=1), self.interp_c, atol=self.tol):
                    raise ValueError(f"{self.name}: the rows of interp_a must sum to interp_c")
            weights = np.concatenate([self.b, np.zeros(rows - s)])
            if not np.allclose(self.interp.sum(axis=1), weights, atol=1e-9):
                raise ValueError(f"{self.name}: the interpolant must equal b at θ=1")

    @property
    def stages(self) -> int:
        return self.b.shape[0]

    @property
    def fsal(self) -> bool:
        return bool(
            self.stages > 1
            and abs(self.c[-1] - 1.0) < self.tol
            and np.allclose(self.a[-1], self.b, atol=self.tol, rtol=0)
        )

    @property
    def adaptive(self) -> bool:
        return self.b_err is not None

    @property
    def error_order(self) -> int | None:
        return None if self.embedded_order is None else self.embedded_order + 1

    @property
    def f_evals_per_step(self) -> int:
        """New vector-field evaluations per step, the carried f(t_n, y_n) reused."""
        return self.stages - 1 if self.fsal else self.stages

    def __repr__(self) -> str:
        return f"ButcherTableau({self.name}, stages={self.stages}, order={self.order})"


def _lower(rows, stages: int) -> np.ndarray:
    a = np.zeros((stages, stages))
    for i, row in enumerate(rows, start=1):
        a[i, : len(row)] = row
    return a


def _tableau(name, rows, b, order, b_hat=None, embedded_order=None, interp=None, tol=1e-10,
             interp_a=None):
    b = np.asarray(b, dtype=np.float64)
    a = _lower(rows, len(b))
    return ButcherTableau(
        name=name,
        a=a,
        b=b,
        c=a.sum(axis=1),
        order=order,
        b_err=None if b_hat is None else b - np.asarray(b_hat, dtype=np.float64),
        embedded_order=embedded_order,
        interp=interp,
        tol=tol,
        interp_a=interp_a,
        interp_c=None if interp_a is None else np.sum(interp_a, axis=1),
    )


# ---------------------------------------------------------------------------------------
# The methods (coefficients from the cited papers)
# ---------------------------------------------------------------------------------------

#: Forward Euler, order 1.
EULER = _tableau("Euler", [], [1.0], order=1)

#: Explicit midpoint rule, order 2 (Hairer, Nørsett & Wanner 1993, eq. II.1.3).
MIDPOINT = _tableau("Midpoint", [(0.5,)], [0.0, 1.0], order=2)

#: Heun's method with embedded Euler, order 2(1).
HEUN = _tableau("Heun", [(1.0,)], [0.5, 0.5], order=2, b_hat=[1.0, 0.0], embedded_order=1)

#: Forward Euler propagated, its error estimated against Heun's trapezoidal rule: the 1(2)
#: pair without local extrapolation (Hairer, Nørsett & Wanner 1993, §II.4, the lowest
#: embedded pair; HEUN above is the same pair propagating the second-order solution). The
#: second stage f(t + h, y + h k_1) is f(t_1, y_1), so the pair is FSAL and costs one new
#: evaluation per step; e = h/2 (k_1 - k_2) = O(h²), hence embedded_order = 1 (the order of
#: the lower member, which sets the controller's exponent 1/2). For a gradient flow
#: y' = -∇L(y) each step is gradient descent with the step chosen by error control,
#: ‖e‖ = h/2 ‖∇L(y_1) - ∇L(y_0)‖.
EULER_HEUN = _tableau(
    "EulerHeun", [(1.0,)], [1.0, 0.0], order=1, b_hat=[0.5, 0.5], embedded_order=1
)

#: Ralston's second-order method with minimal error bound (Ralston 1962).
RALSTON = _tableau("Ralston", [(2 / 3,)], [0.25, 0.75], order=2)

#: The classic fourth-order Runge-Kutta method (Kutta 1901).
RK4 = _tableau("RK4", [(0.5,), (0.0, 0.5), (0.0, 0.0, 1.0)], [1 / 6, 1 / 3, 1 / 3, 1 / 6], order=4)

#: Bogacki & Shampine (1989) 3(2) pair, FSAL, with its cubic Hermite-equivalent interpolant.
BOSH3 = _tableau(
    "Bosh3",
    [(0.5,), (0.0, 0.75), (2 / 9, 1 / 3, 4 / 9)],
    [2 / 9, 1 / 3, 4 / 9, 0.0],
    order=3,
    b_hat=[7 / 24, 1 / 4, 1 / 3, 1 / 8],
    embedded_order=2,
    interp=[
        (1.0, -4 / 3, 5 / 9),
        (0.0, 1.0, -2 / 3),
        (0.0, 4 / 3, -8 / 9),
        (0.0, -1.0, 1.0),
    ],
)

#: Dormand & Prince (1980) 5(4) pair, FSAL; 4th-order dense output (Shampine 1986).
DOPRI5 = _tableau(
    "Dopri5",
    [
        (1 / 5,),
        (3 / 40, 9 / 40),
        (44 / 45, -56 / 15, 32 / 9),
        (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
        (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
        (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84),
    ],
    [35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84, 0.0],
    order=5,
    b_hat=[5179 / 57600, 0.0, 7571 / 16695, 393 / 640, -92097 / 339200, 187 / 2100, 1 / 40],
    embedded_order=4,
    interp=[
        (1.0, -8048581381 / 2820520608, 8663915743 / 2820520608, -12715105075 / 11282082432),
        (0.0, 0.0, 0.0, 0.0),
        (0.0, 131558114200 / 32700410799, -68118460800 / 10900136933,
         87487479700 / 32700410799),
        (0.0, -1754552775 / 470086768, 14199869525 / 1410260304, -10690763975 / 1880347072),
        (0.0, 127303824393 / 49829197408, -318862633887 / 49829197408,
         701980252875 / 199316789632),
        (0.0, -282668133 / 205662961, 2019193451 / 616988883, -1453857185 / 822651844),
        (0.0, 40617522 / 29380423, -110615467 / 29380423, 69997945 / 29380423),
    ],
)

_TSIT5_A_ROWS = (
    (0.161,),
    (-0.008480655492356989, 0.335480655492357),
    (2.897153057105493, -6.359448489975075, 4.3622954328695815),
    (5.325864828439257, -11.748883564062828, 7.4955393428898365, -0.09249506636175525),
    (5.86145544294642, -12.92096931784711, 8.159367898576159, -0.071584973281401,
     -0.028269050394068383),
    (0.09646076681806523, 0.01, 0.4798896504144996, 1.379008574103742, -3.290069515436081,
     2.324710524099774),
)
_TSIT5_B = (*_TSIT5_A_ROWS[-1], 0.0)
_TSIT5_B_HAT = (
    0.09468075576583945, 0.009183565540343254, 0.4877705284247616, 1.234297566930479,
    -2.7077123499835256, 1.866628418170587, 1 / 66,
)

#: Tsitouras (2011) 5(4) pair, FSAL, with its 4th-order continuous extension (§4 there).
#: Its c_i are the row sums of a by construction ("only the first column simplifying
#: assumption"), checked here to the digits published.
TSIT5 = _tableau(
    "Tsit5",
    _TSIT5_A_ROWS,
    _TSIT5_B,
    order=5,
    b_hat=_TSIT5_B_HAT,
    embedded_order=4,
    interp=[
        (0.9999999999999998, -2.763706197274826, 2.9132554618219126, -1.0530884977290216),
        (0.0, 0.13169999999999998, -0.2234, 0.1017),
        (0.0, 3.930296236894751, -5.941033872131505, 2.490627285651253),
        (0.0, -12.411077166933676, 30.338188630282318, -16.548102889244902),
        (0.0, 37.50931341651104, -88.1789048947664, 47.37952196281928),
        (0.0, -27.896526289197286, 65.09189467479368, -34.87065786149661),
        (0.0, 1.5, -4.0, 2.5),
    ],
    tol=1e-9,
)

_DOP853_A_ROWS = (
    (0.05260015195876773,),
    (0.0197250569845379, 0.0591751709536137,),
    (0.02958758547680685, 0.0, 0.08876275643042054,),
    (0.2413651341592667, 0.0, -0.8845494793282861, 0.924834003261792,),
    (0.037037037037037035, 0.0, 0.0, 0.17082860872947386, 0.12546768756682242,),
    (0.037109375, 0.0, 0.0, 0.17025221101954405, 0.06021653898045596, -0.017578125,),
    (0.03709200011850479, 0.0, 0.0, 0.17038392571223998, 0.10726203044637328,
     -0.015319437748624402, 0.008273789163814023),
    (0.6241109587160757, 0.0, 0.0, -3.3608926294469414, -0.868219346841726, 27.59209969944671,
     20.154067550477894, -43.48988418106996),
    (0.47766253643826434, 0.0, 0.0, -2.4881146199716677, -0.590290826836843, 21.230051448181193,
     15.279233632882423, -33.28821096898486, -0.020331201708508627),
    (-0.9371424300859873, 0.0, 0.0, 5.186372428844064, 1.0914373489967295, -8.149787010746927,
     -18.52006565999696, 22.739487099350505, 2.4936055526796523, -3.0467644718982196),
    (2.273310147516538, 0.0, 0.0, -10.53449546673725, -2.0008720582248625, -17.9589318631188,
     27.94888452941996, -2.8589982771350235, -8.87285693353063, 12.360567175794303,
     0.6433927460157636),
)
_DOP853_B = (0.054293734116568765, 0.0, 0.0, 0.0, 0.0, 4.450312892752409, 1.8915178993145003,
    -5.801203960010585, 0.3111643669578199, -0.1521609496625161, 0.20136540080403034,
    0.04471061572777259)
_DOP853_E5 = (0.01312004499419488, 0.0, 0.0, 0.0, 0.0, -1.2251564463762044, -0.4957589496572502,
    1.6643771824549864, -0.35032884874997366, 0.3341791187130175, 0.08192320648511571,
    -0.022355307863886294)

# DOP853's dense output (Hairer, Nørsett & Wanner 1993, §II.6 and the code DOP853 there,
# subroutine CONTD8): three extra stages k_14..k_16 after k_13 = f(t + h, y_1), at
# c = 0.1, 0.2, 7/9, and the interpolant of order 7
#     y(t + θh) = y + θ(F_0 + (1-θ)(F_1 + θ(F_2 + (1-θ)(F_3 + θ(F_4 + (1-θ)(F_5 + θF_6)))))),
# F_0 = Δ = y_1 - y, F_1 = hk_1 - Δ, F_2 = 2Δ - h(k_13 + k_1), F_{3..6} = h Σ_i D_i k_i.
_DOP853_DENSE_A = (
    (0.056167502283047954, 0.0, 0.0, 0.0, 0.0, 0.0, 0.25350021021662483, -0.2462390374708025,
     -0.12419142326381637, 0.15329179827876568, 0.00820105229563469, 0.007567897660545699,
     -0.008298, 0.0, 0.0, 0.0),
    (0.03183464816350214, 0.0, 0.0, 0.0, 0.0, 0.028300909672366776, 0.053541988307438566,
     -0.05492374857139099, 0.0, 0.0, -0.00010834732869724932, 0.0003825710908356584,
     -0.00034046500868740456, 0.1413124436746325, 0.0, 0.0),
    (-0.42889630158379194, 0.0, 0.0, 0.0, 0.0, -4.697621415361164, 7.683421196062599,
     4.06898981839711, 0.3567271874552811, 0.0, 0.0, 0.0, -0.0013990241651590145,
     2.9475147891527724, -9.15095847217987, 0.0),
)
_DOP853_D = (
    (-8.428938276109013, 0.0, 0.0, 0.0, 0.0, 0.5667149535193777, -3.0689499459498917,
     2.38466765651207, 2.117034582445028, -0.871391583777973, 2.2404374302607883,
     0.6315787787694688, -0.08899033645133331, 18.148505520854727, -9.194632392478356,
     -4.436036387594894),
    (10.427508642579134, 0.0, 0.0, 0.0, 0.0, 242.28349177525817, 165.20045171727028,
     -374.5467547226902, -22.113666853125306, 7.733432668472264, -30.674084731089398,
     -9.332130526430229, 15.697238121770845, -31.139403219565178, -9.35292435884448,
     35.81684148639408),
    (19.985053242002433, 0.0, 0.0, 0.0, 0.0, -387.0373087493518, -189.17813819516758,
     527.8081592054236, -11.57390253995963, 6.8812326946963, -1.0006050966910838,
     0.7777137798053443, -2.778205752353508, -60.19669523126412, 84.32040550667716,
     11.99229113618279),
    (-25.69393346270375, 0.0, 0.0, 0.0, 0.0, -154.18974869023643, -231.5293791760455,
     357.6391179106141, 93.40532418362432, -37.45832313645163, 104.0996495089623,
     29.8402934266605, -43.53345659001114, 96.32455395918828, -39.17726167561544,
     -149.72683625798564),
)


def _dop853_interp() -> np.ndarray:
    """CONTD8's interpolant as P (16 x 7): y(t + θh) = y + h Σ_i k_i Σ_j P_ij θ^(j+1)."""
    b = np.concatenate([np.asarray(_DOP853_B), np.zeros(4)])
    first, last = np.eye(16)[0], np.eye(16)[12]
    # F_i / h as weights on the 16 stages (F_0 = Δ = h Σ b_i k_i).
    weights = [b, first - b, 2 * b - last - first, *np.asarray(_DOP853_D)]
    theta, one_minus = np.polynomial.Polynomial([0, 1]), np.polynomial.Polynomial([1, -1])
    # In the nested form F_i multiplies θ^⌈(i+1)/2⌉ (1-θ)^⌊(i+1)/2⌋:
    factors = [theta, theta * one_minus, theta**2 * one_minus, theta**2 * one_minus**2,
               theta**3 * one_minus**2, theta**3 * one_minus**3, theta**4 * one_minus**3]
    p = np.zeros((16, 7))
    for w, poly in zip(weights, factors, strict=True):
        coef = np.zeros(8)
        coef[: len(poly.coef)] = poly.coef
        p += np.outer(w, coef[1:])
    return p


#: Dormand & Prince's DOP853 (Hairer, Nørsett & Wanner 1993, §II.10): order 8 with the
#: 5th-order embedded error estimate E5; 12 stages, not FSAL; 7th-order dense output from
#: three extra stages (evaluated only when the solve interpolates between steps).
DOPRI8 = _tableau(
    "Dopri8",
    _DOP853_A_ROWS,
    _DOP853_B,
    order=8,
    b_hat=tuple(b - e for b, e in zip(_DOP853_B, _DOP853_E5, strict=True)),
    embedded_order=5,
    tol=1e-9,
    interp=_dop853_interp(),
    interp_a=_DOP853_DENSE_A,
)


# ---------------------------------------------------------------------------------------
# Stiff methods: singly diagonally implicit RK (ESDIRK) and Rosenbrock tableaux
# ---------------------------------------------------------------------------------------


def _check_embedded(name, a_or_weights, b, b_err, order, embedded_order, residuals, tol):
    """Shared checks of a stiff tableau's weights: b is order p, b - b_err order q."""
    s = b.shape[0]
    bad = {p: r for p, r in residuals(a_or_weights, b, order).items() if r > tol}
    if bad:
        raise ValueError(f"{name}: order conditions fail (order: residual) {bad}")
    if b_err is not None:
        if b_err.shape != (s,) or abs(b_err.sum()) > tol:
            raise ValueError(f"{name}: b_err must have shape ({s},) and sum to 0")
        if embedded_order is None:
            raise ValueError(f"{name}: give embedded_order with b_err")
        bad = {
            p: r for p, r in residuals(a_or_weights, b - b_err, embedded_order).items() if r > tol
        }
        if bad:
            raise ValueError(f"{name}: embedded method misses order {bad}")


@dataclasses.dataclass(frozen=True, eq=False)
class DIRKTableau(_ValueEq):
    """A singly diagonally implicit Runge-Kutta method (SDIRK/ESDIRK) as data.

    Stage i solves Y_i = y + h Σ_{j<i} a_ij k_j + h γ k_i with k_i = f(t + c_i h, Y_i)
    (a zero diagonal entry makes the stage explicit); y_1 = y + h Σ b_i k_i. Every implicit
    stage shares the diagonal γ, so one LU factorization of I - hγJ serves the whole step
    (Hairer & Wanner 1996, *Solving ODEs II*, §IV.6).

    Args:
        name: display name.
        a: lower-triangular stage matrix, shape (s, s); its non-zero diagonal entries equal.
        b, c: weights and nodes (c = row sums of a).
        order: classical order (checked on all rooted trees, Thm. II.2.13 of HNW I).
        b_err: b - b̂ for the embedded method, with `embedded_order`.
        tol: tolerance of the checks.
    """

    name: str
    a: np.ndarray
    b: np.ndarray
    c: np.ndarray
    order: int
    b_err: np.ndarray | None = None
    embedded_order: int | None = None
    tol: float = 1e-10

    def __post_init__(self):
        for field in ("a", "b", "c", "b_err"):
            object.__setattr__(self, field, _readonly(getattr(self, field)))
        s = self.b.shape[0]
        if self.a.shape != (s, s) or self.c.shape != (s,):
            raise ValueError(f"{self.name}: a must be ({s}, {s}) and c ({s},) to match b")
        if np.any(np.triu(self.a, 1) != 0):
            raise ValueError(f"{self.name}: a must be lower triangular (diagonally implicit)")
        diag = np.diag(self.a)
        if np.any(diag < 0) or len(set(diag[diag != 0].tolist())) != 1:
            raise ValueError(
                f"{self.name}: the non-zero diagonal entries of a must all equal one γ > 0 "
                f"(singly diagonally implicit); got {diag.tolist()}"
            )
        if not np.allclose(self.a.sum(axis=1), self.c, atol=self.tol, rtol=0):
            raise ValueError(f"{self.name}: the rows of a must sum to c")
        _check_embedded(
            self.name, self.a, self.b, self.b_err, self.order, self.embedded_order,
            order_residuals, self.tol,
        )

    @property
    def stages(self) -> int:
        return self.b.shape[0]

    @property
    def gamma(self) -> float:
        diag = np.diag(self.a)
        return float(diag[diag != 0][0])

    @property
    def stiffly_accurate(self) -> bool:
        """b equals the last row of a (so y_1 is the last stage and f(t + h, y_1) = k_s)."""
        return bool(abs(self.c[-1] - 1) < self.tol and np.allclose(self.a[-1], self.b))

    @property
    def adaptive(self) -> bool:
        return self.b_err is not None

    @property
    def error_order(self) -> int | None:
        """The local order of the error estimate: min(p, q) + 1."""
        if self.embedded_order is None:
            return None
        return min(self.order, self.embedded_order) + 1

    def __repr__(self) -> str:
        return f"DIRKTableau({self.name}, stages={self.stages}, order={self.order})"


def _rosenbrock_weight(alpha, beta, tree):
    # Hairer & Wanner (1996) §IV.7: a vertex with one child comes from f' (through α and the
    # Jacobian terms γ together: β = α + Γ); with m >= 2 children only from f^(m) (α).
    phi = np.ones(alpha.shape[0])
    matrix = beta if len(tree) == 1 else alpha
    for child in tree:
        phi = phi * (matrix @ _rosenbrock_weight(alpha, beta, child))
    return phi


def rosenbrock_order_residuals(alpha_beta, b, order: int) -> dict[int, float]:
    """Largest |b·Φ(τ) - 1/γ(τ)| per order for a Rosenbrock method given as (α, α + Γ).

    The diagonal γ of Γ stays in β, which turns the right-hand sides of Hairer & Wanner
    (1996) Table IV.7.1 (polynomials in γ) into the Runge-Kutta values 1/γ(τ).
    """
    alpha, beta = (np.asarray(x, dtype=np.float64) for x in alpha_beta)
    b = np.asarray(b, dtype=np.float64)
    return {
        p: max(
            abs(b @ _rosenbrock_weight(alpha, beta, t) - 1.0 / _density(t))
            for t in rooted_trees(p)
        )
        for p in range(1, order + 1)
    }


@dataclasses.dataclass(frozen=True, eq=False)
class RosenbrockTableau(_ValueEq):
    """A Rosenbrock method as data (Hairer & Wanner 1996, *Solving ODEs II*, eq. IV.7.4):

        (I - γ h J) k_i = h f(t + α_i h, y + Σ_{j<i} α_ij k_j) + h J Σ_{j<i} γ_ij k_j
                          + γ_i h² ∂f/∂t,                y_1 = y + Σ b_i k_i,

    with J = ∂f/∂y(t, y), α_i = Σ_j α_ij, γ_i = Σ_{j<=i} γ_ij. The stepper uses the
    equivalent form without matrix-vector products (eq. IV.7.25), from `transformed`.

    Args:
        name: display name.
        alpha: strictly lower-triangular α, shape (s, s).
        gamma_matrix: lower-triangular Γ with constant diagonal γ.
        b: weights; `b_err` = b - b̂ with `embedded_order`.
        order: classical order, checked with `rosenbrock_order_residuals`.
    """

    name: str
    alpha: np.ndarray
    gamma_matrix: np.ndarray
    b: np.ndarray
    order: int
    b_err: np.ndarray | None = None
    embedded_order: int | None = None
    tol: float = 1e-10

    def __post_init__(self):
        for field in ("alpha", "gamma_matrix", "b", "b_err"):
            object.__setattr__(self, field, _readonly(getattr(self, field)))
        s = self.b.shape[0]
        if self.alpha.shape != (s, s) or self.gamma_matrix.shape != (s, s):
            raise ValueError(f"{self.name}: alpha and gamma_matrix must be ({s}, {s})")
        if np.any(np.triu(self.alpha) != 0) or np.any(np.triu(self.gamma_matrix, 1) != 0):
            raise ValueError(
                f"{self.name}: alpha must be strictly and gamma_matrix lower triangular"
            )
        diag = np.diag(self.gamma_matrix)
        if diag[0] <= 0 or np.any(diag != diag[0]):
            raise ValueError(f"{self.name}: the diagonal of gamma_matrix must be one γ > 0")
        _check_embedded(
            self.name, (self.alpha, self.alpha + self.gamma_matrix), self.b, self.b_err,
            self.order, self.embedded_order, rosenbrock_order_residuals, self.tol,
        )

    @property
    def stages(self) -> int:
        return self.b.shape[0]

    @property
    def gamma(self) -> float:
        return float(self.gamma_matrix[0, 0])

    @property
    def c(self) -> np.ndarray:
        return self.alpha.sum(axis=1)

    @property
    def d(self) -> np.ndarray:
        return self.gamma_matrix.sum(axis=1)

    @property
    def adaptive(self) -> bool:
        return self.b_err is not None

    @property
    def error_order(self) -> int | None:
        if self.embedded_order is None:
            return None
        return min(self.order, self.embedded_order) + 1

    @functools.cached_property
    def transformed(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
        """(A, C, m, m_err) of HW eq. IV.7.25 in u_i = Σ_{j<=i} γ_ij k_j:

        (I/(hγ) - J) u_i = f(t + α_i h, y + Σ_j A_ij u_j) + Σ_j (C_ij / h) u_j + γ_i h ∂f/∂t,
        y_1 = y + Σ m_j u_j,   with A = αΓ⁻¹, C = diag(1/γ) - Γ⁻¹, m = bΓ⁻¹.
        """
        g_inv = np.linalg.inv(self.gamma_matrix)
        a = np.tril(self.alpha @ g_inv, -1)
        c = np.tril(np.diag(1.0 / np.diag(self.gamma_matrix)) - g_inv, -1)
        m = self.b @ g_inv
        m_err = None if self.b_err is None else self.b_err @ g_inv
        return a, c, m, m_err

    def __repr__(self) -> str:
        return f"RosenbrockTableau({self.name}, stages={self.stages}, order={self.order})"


def _dirk(name, rows, order, gamma, embedded_row=None, embedded_order=None, tol=1e-10):
    """An ESDIRK from its rows below an explicit first stage; stiffly accurate: b = last row."""
    s = len(rows) + 1
    a = np.zeros((s, s))
    for i, row in enumerate(rows, start=1):
        a[i, : len(row)] = row
        a[i, i] = gamma
    b = a[-1].copy()
    b_err = None if embedded_row is None else b - a[embedded_row]
    return DIRKTableau(name, a, b, a.sum(axis=1), order, b_err, embedded_order, tol)


#: Implicit (backward) Euler, written with an explicit first stage k_0 = f(t, y) so that
#: b̂ = (1/2, 1/2) (the trapezoidal rule) gives the error estimate h (k_1 - k_0) / 2.
IMPLICIT_EULER = DIRKTableau(
    "ImplicitEuler", a=[[0.0, 0.0], [0.0, 1.0]], b=[0.0, 1.0], c=[0.0, 1.0], order=1,
    b_err=[-0.5, 0.5], embedded_order=2,
)

_KV3_G = 0.43586652150845900  # the root of 6γ³ - 18γ² + 9γ - 1 = 0 in (1/3, 1/2): L-stability

#: Kværnø (2004, BIT 44:489-502) ESDIRK 3(2), 4 stages, stiffly accurate, L-stable; the
#: coefficients as functions of γ.
KVAERNO3 = _dirk(
    "Kvaerno3",
    [
        (_KV3_G,),
        ((-4 * _KV3_G**2 + 6 * _KV3_G - 1) / (4 * _KV3_G), (1 - 2 * _KV3_G) / (4 * _KV3_G)),
        ((6 * _KV3_G - 1) / (12 * _KV3_G), -1 / ((24 * _KV3_G - 12) * _KV3_G),
         (-6 * _KV3_G**2 + 6 * _KV3_G - 1) / (6 * _KV3_G - 3)),
    ],
    order=3, gamma=_KV3_G, embedded_row=2, embedded_order=2, tol=1e-9,
)

#: Kværnø (2004, BIT 44:489-502) ESDIRK 5(4), 7 stages, γ = 0.26, stiffly accurate,
#: L-stable; the embedded 4th-order solution is the sixth stage.
KVAERNO5 = _dirk(
    "Kvaerno5",
    [
        (0.26,),
        (0.13, 0.84033320996790809),
        (0.22371961478320505, 0.47675532319799699, -0.06470895363112615),
        (0.16648564323248321, 0.10450018841591720, 0.03631482272098715, -0.13090704451073998),
        (0.13855640231268224, 0.0, -0.04245337201752043, 0.02446657898003141,
         0.61943039072480676),
        (0.13659751177640291, 0.0, -0.05496908796538376, -0.04118626728321046,
         0.62993304899016403, 0.06962479448202728),
    ],
    order=5, gamma=0.26, embedded_row=5, embedded_order=4,
)

_RODAS5_ALPHA = (
    (0.38,),
    (0.1899188971074152, 0.1979321027247381),
    (0.1110729281178426, 0.5456026683145674, -0.1727037026450261),
    (0.2329444418850307, 0.025099380960713898, 0.1443314046300300, 0.054672473406183418),
    (-0.036201017843430883, 4.208448872731939, -7.549674427720996, -0.2076823626400282,
     4.585108935472517),
    (7.585261698003052, -15.57426208319938, -8.814406895608121, 1.534698996826085,
     16.07870828397837, 0.19),
    (0.4646018839086969, 0.0, -1.720907508837576, 0.2910480220957973, 1.821778861539924,
     -0.046521258706842056, 0.19),
)
# β = α + Γ below the diagonal (Di Marzo 1993); rows 7 and 8 are b̂ and b (stiffly accurate).
_RODAS5_BETA = (
    (0.0076920774666285364,),
    (-0.058129718999580252, -0.063251113355141360),
    (0.7075715596134048, -0.5980299539145789, 0.5294131505610923),
    (-0.034975026573934865, -0.1928476085817357, 0.089839586125126941, 0.027613185520411822),
    (7.585261698003052, -15.57426208319938, -8.814406895608121, 1.534698996826085,
     16.07870828397837),
    (0.4646018839086969, 0.0, -1.720907508837576, 0.2910480220957973, 1.821778861539924,
     -0.046521258706842056),
    (0.4646018839086969, 0.0, -1.720907508837576, 0.2910480220957973, 1.821778861539924,
     -0.026744882930135193, -0.019776375776706864),
)


def _rodas5() -> RosenbrockTableau:
    gamma = 0.19
    alpha = _lower(_RODAS5_ALPHA, 8)
    beta = _lower(_RODAS5_BETA, 8) + gamma * np.eye(8)
    b, b_hat = beta[7].copy(), beta[6].copy()
    return RosenbrockTableau(
        "Rodas5", alpha, beta - alpha, b, order=5, b_err=b - b_hat, embedded_order=4
    )


#: Rodas5 (Di Marzo 1993; Hairer & Wanner 1996 §VI.4): Rosenbrock method of order 5(4),
#: 8 stages, γ = 0.19, stiffly accurate, L-stable; the coefficients pass every order
#: condition to 1e-15 here (one digit of α_64 differs between published copies:
#: -0.2076823626400282 is the one that satisfies them).
RODAS5 = _rodas5()

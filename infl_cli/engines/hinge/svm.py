"""The linear SVM of the paper's Figure 3, trained to a *certified* optimum, and the smooth
hinge that gives it a Hessian.

**The hinge model.** For labels y ∈ {±1} (class 0 is +1) and N training points,

    P(w) = (1/N)·Σ max(0, 1 − yᵢ wᵀxᵢ) + (wd/2)·‖w‖²,

the authors' ``LinearSVC(C = 1/(N·wd), loss='hinge')``, no bias. It is wd-strongly convex
but not smooth, so no gradient certifies it. Its dual (liblinear's, rescaled) is

    D(α) = (1/N)·Σ αᵢ − (1/(2·wd·N²))·‖Σ αᵢ yᵢ xᵢ‖²,  α ∈ [0, 1]ᴺ,  w(α) = Σ αᵢ yᵢ xᵢ /(wd·N),

and for every feasible α, P(w(α)) − P(w*) ≤ P(w(α)) − D(α) = gap(α). Strong convexity gives
(wd/2)‖w − w*‖² ≤ P(w) − P(w*), so **‖w(α) − w*‖ ≤ √(2·gap/wd)** (:func:`certificate`).

**Exact arithmetic.** The gap is first-order in the margins' errors (the free support
vectors sit on the kink of the hinge), so a float64 evaluation of it would hide the optimum
behind its own rounding. :func:`certificate` therefore evaluates P(w(α)) and D(α) *exactly*:
pixels are integers kᵢⱼ/255, α is rounded to multiples of 2⁻⁵² (still feasible), and every
sum is an integer (:mod:`~infl_cli.engines.hinge.exact_sums`: int64 limbs that never overflow, carried in
Python integers); the gap is an exact fraction. The certified model is w(α) itself; the
float64 weights used elsewhere are its correctly rounded value. Test margins are exact too,
so an actual change of the hinge test loss, computed from two certified models, is off by at
most ‖x_test‖·(r + r₋) (the hinge is 1-Lipschitz in the margin).

**Training** (:func:`solve_dual`): dual coordinate ascent (Hsieh et al. 2008, as liblinear) on
an active set (the free and near-margin points, with their Gram matrix), alternated with an
exact solve of the free points' margin equations (an active-set Newton step) and a full KKT
check; leave-one-out retraining warm-starts from the full model's α with αᵢ = 0 for the
removed point and N − 1 in the scaling (the authors' C = 1/((N − 1)·wd)). It is a sequential
method on the CPU (NumPy); at 784 weights the work is small.

**The smooth hinge** SmoothHinge_t(s) = t·log(1 + exp((1 − s)/t)) (the authors'
``influence/smooth_hinge.py``; t = 0 is the hinge). Its derivatives: ℓ'(s) = −σ((1 − s)/t),
ℓ''(s) = σ(u)·σ(−u)/t with u = (1 − s)/t; ℓ is 1-Lipschitz and ℓ'' ≤ 1/(4t).
:func:`fit_smooth` trains the smooth model at its own t (primal Newton; certified by its
gradient, rounding bounded, ‖w − w*‖ ≤ ‖∇R‖/wd).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from infl_cli.engines.hinge.exact_sums import exact_matvec, exact_rmatvec
from infl_cli.errors import InflError

ALPHA_BITS = 52  # α is certified on a 2⁻⁵² grid, refined on a 2⁻¹⁰⁴ one
UNIT = 2.0 ** -53


# ----------------------------------------------------------------------------- smooth hinge
def smooth_hinge(s, t: float):
    """SmoothHinge_t(s), stable for every s; t = 0: max(0, 1 − s)."""
    s = np.asarray(s, dtype=np.float64)
    if t == 0:
        return np.maximum(0.0, 1.0 - s)
    u = (1.0 - s) / t
    return t * (np.maximum(u, 0.0) + np.log1p(np.exp(-np.abs(u))))


def smooth_hinge_d1(s, t: float):
    """dℓ/ds: −σ((1 − s)/t); t = 0: −1 where s < 1, else 0 (the authors' subgradient)."""
    s = np.asarray(s, dtype=np.float64)
    if t == 0:
        return -(s < 1.0).astype(np.float64)
    return -_sigmoid((1.0 - s) / t)


def smooth_hinge_d2(s, t: float):
    """d²ℓ/ds²: σ(u)·σ(−u)/t with u = (1 − s)/t; t = 0: 0 (almost everywhere)."""
    s = np.asarray(s, dtype=np.float64)
    if t == 0:
        return np.zeros_like(s)
    u = (1.0 - s) / t
    return _sigmoid(u) * _sigmoid(-u) / t


def _sigmoid(u):
    out = np.empty_like(u)
    pos = u >= 0
    out[pos] = 1.0 / (1.0 + np.exp(-u[pos]))
    e = np.exp(u[~pos])
    out[~pos] = e / (1.0 + e)
    return out


def _round_up(x: Fraction) -> float:
    """A float ≥ the fraction x (≥ 0)."""
    f = float(x)
    return f if Fraction(f) >= x else math.nextafter(f, math.inf)


def _sqrt_up(x: float) -> float:
    return math.nextafter(math.sqrt(x), math.inf) if x > 0 else 0.0


# ----------------------------------------------------------------------------- certificate
@dataclass
class Certified:
    """A certified SVM: ``alpha`` (the certified α, multiples of 2⁻⁵²), ``weight`` (float64
    of w(α), correctly rounded per entry), ``gap`` (the exact gap, rounded up), ``radius``
    (≥ ‖w(α) − w*‖), ``primal`` (P(w(α)), rounded), ``margins`` [n] (yᵢ·w(α)ᵀxᵢ of every
    training point, correctly rounded from the exact value), ``test_margins`` [m] likewise,
    ``test_hinge`` [m] (the exact hinge test losses, as fractions), ``n`` (N)."""

    alpha: np.ndarray
    weight: np.ndarray
    gap: float
    radius: float
    primal: float
    margins: np.ndarray
    test_margins: np.ndarray
    test_hinge: list
    n: int


def certificate(k_train: np.ndarray, y: np.ndarray, alpha: np.ndarray, wd: float,
                keep: np.ndarray, k_test: np.ndarray, y_test: np.ndarray,
                scale: int = 255, refine: bool = True) -> Certified:
    """The exact duality gap of α (rounded to 2⁻⁵², clipped to [0, 1], 0 off ``keep``) for
    the SVM on the points ``keep`` of ``k_train`` (int64 pixel integers, x = k/scale),
    labels ``y`` ∈ {±1}; and what it certifies (see the module doc), with the exact margins
    and hinge losses of the test points ``k_test`` (labels ``y_test`` ∈ {±1}).

    With ``refine``, one step of iterative refinement beyond float64: the free points'
    margin residuals 1 − mᵢ are taken from the *exact* margins (each correctly rounded, so
    accurate relative to its own size), the correction δ of their α solves G_FF·δ = 1 − m_F
    in float64, and α + δ (δ on a 2⁻¹⁰⁴ grid: α is then a sum of two floats, exact as a
    rational) is certified again; the smaller of the two gaps is kept. The float64 dual
    iterate leaves its free margins about 1e-15 from 1, so the gap near (free/N)·1e-15; the
    refined α takes them to about 1e-15 of that."""
    keep = np.asarray(keep, dtype=bool)
    base = np.clip(np.rint(np.asarray(alpha, dtype=np.float64) * (1 << ALPHA_BITS)), 0,
                   1 << ALPHA_BITS).astype(np.int64)
    base[~keep] = 0
    a = [int(v) << ALPHA_BITS for v in base.tolist()]  # α·2¹⁰⁴
    cert, exact = _certify(k_train, y, a, 2 * ALPHA_BITS, wd, keep, k_test, y_test, scale)
    if not refine or cert.gap == 0.0:
        return cert
    free = np.flatnonzero(keep & (base > 0) & (base < (1 << ALPHA_BITS)))
    if free.size == 0:
        return cert
    scaled, num = exact
    residual = np.array([(num - scaled[i]) / num for i in free.tolist()])  # 1 − mᵢ, rounded
    xf = k_train[free] / scale
    gram = (y[free, None] * y[None, free]) * (xf @ xf.T) / (wd * cert.n)
    delta = np.linalg.lstsq(gram, residual, rcond=None)[0]
    fine = list(a)
    for i, d in zip(free.tolist(), np.rint(delta * 2.0 ** (2 * ALPHA_BITS)).tolist()):
        fine[i] = min(max(fine[i] + int(d), 0), 1 << (2 * ALPHA_BITS))
    better, _ = _certify(k_train, y, fine, 2 * ALPHA_BITS, wd, keep, k_test, y_test, scale)
    return better if better.gap < cert.gap else cert


def _certify(k_train, y, a: list, bits: int, wd, keep, k_test, y_test, scale) -> tuple:
    """The certificate of α = a/2^bits (Python integers, feasible, 0 off ``keep``), and the
    exact training margins (as integers over a common denominator) it was made from."""
    n = int(keep.sum())
    one = 1 << bits
    v = exact_rmatvec(k_train, [ai * int(yi) for ai, yi in zip(a, y.tolist())])  # w = v/denom
    wdf = Fraction(wd)
    denom = wdf * n * scale * one
    q = denom * scale  # yᵢ·w(α)ᵀxᵢ = yᵢ·(Σⱼ vⱼ kᵢⱼ)/q, q = num/qd
    num, qd = q.numerator, q.denominator

    def margins_of(k, labels):
        raw = exact_matvec(k, v) if len(k) else []
        return [int(s) * r * qd for r, s in zip(raw, labels.tolist())]  # margin·num

    scaled = margins_of(k_train, y)
    hinge_sum = sum(num - t for t, kept in zip(scaled, keep.tolist()) if kept and t < num)
    half_wd_w2 = wdf / 2 * Fraction(sum(x * x for x in v)) / (denom * denom)
    primal = Fraction(hinge_sum, num) / n + half_wd_w2
    dual = Fraction(sum(ai for ai, kept in zip(a, keep.tolist()) if kept), one) / n \
        - half_wd_w2  # the same quadratic term
    gap = primal - dual  # ≥ 0 exactly (weak duality)
    gap_up = _round_up(gap) if gap > 0 else 0.0
    radius = _sqrt_up(math.nextafter(2.0 * gap_up / wd, math.inf)) if gap_up else 0.0
    tests = margins_of(k_test, y_test)
    cert = Certified(alpha=np.array([ai / one for ai in a]),
                     weight=np.array([float(Fraction(x) / denom) for x in v]),
                     gap=gap_up, radius=radius, primal=float(primal),
                     margins=np.array([t / num for t in scaled]),
                     test_margins=np.array([t / num for t in tests]),
                     test_hinge=[Fraction(num - t, num) if t < num else Fraction(0)
                                 for t in tests], n=n)
    return cert, (scaled, num)


# ----------------------------------------------------------------------------- training
@dataclass
class DualReport:
    rounds: int
    sweeps: int
    kkt: float  # the largest projected-gradient violation |mᵢ − 1| (float64 margins)
    active: int


def solve_dual(x: np.ndarray, y: np.ndarray, wd: float, alpha: np.ndarray,
               keep: np.ndarray, kkt_tol: float = 1e-13, max_rounds: int = 60,
               band: float = 0.25, max_sweeps: int = 400) -> tuple:
    """Dual coordinate ascent to (nearly) exact optimality: returns (α, report).

    Each round recomputes w(α) and every margin in float64, takes the active set (free
    points, violators and points within ``band`` of the margin), runs coordinate sweeps on
    it with its Gram matrix, then solves the free points' margin equations exactly (a Newton
    step on the dual restricted to them, stopped at the box), until the largest KKT
    violation is ≤ ``kkt_tol``."""
    keep = np.asarray(keep, dtype=bool)
    n = int(keep.sum())
    c = 1.0 / (wd * n)
    alpha = np.where(keep, np.clip(alpha, 0.0, 1.0), 0.0)
    sweeps_done = 0
    kkt = math.inf
    active = 0
    rng = np.random.default_rng(0)
    for rounds in range(1, max_rounds + 1):
        w = c * (x.T @ (alpha * y))
        m = y * (x @ w)
        g = m - 1.0
        viol = np.where(alpha <= 0.0, np.minimum(g, 0.0),
                        np.where(alpha >= 1.0, np.maximum(g, 0.0), g))
        viol[~keep] = 0.0
        kkt = float(np.max(np.abs(viol)))
        if kkt <= kkt_tol:
            break
        chosen = keep & ((viol != 0.0) | (np.abs(g) < band))
        idx = np.flatnonzero(chosen)
        active = idx.size
        xa = x[idx]
        ya = y[idx]
        gram = c * (ya[:, None] * ya[None, :]) * (xa @ xa.T)
        ma = m[idx].copy()
        aa = alpha[idx].copy()
        diag = np.diag(gram).copy()
        diag[diag <= 0] = np.inf
        for _ in range(max_sweeps):
            sweeps_done += 1
            moved = 0.0
            for j in rng.permutation(idx.size):
                new = aa[j] - (ma[j] - 1.0) / diag[j]
                new = 1.0 if new > 1.0 else (0.0 if new < 0.0 else new)
                d = new - aa[j]
                if d != 0.0:
                    ma += d * gram[:, j]
                    aa[j] = new
                    moved = max(moved, abs(d))
            _polish(gram, ma, aa)
            if moved < 1e-15:
                break
        alpha[idx] = aa
    return alpha, DualReport(rounds=rounds, sweeps=sweeps_done, kkt=kkt, active=active)


def _polish(gram: np.ndarray, ma: np.ndarray, aa: np.ndarray, steps: int = 4) -> None:
    """Newton steps on the free points' margin equations G_FF·δ = 1 − m_F, each stopped where
    an α reaches its box (that α then leaves the free set); in place."""
    for _ in range(steps):
        free = np.flatnonzero((aa > 0.0) & (aa < 1.0))
        if free.size == 0:
            return
        rhs = 1.0 - ma[free]
        if np.max(np.abs(rhs)) < 1e-16:
            return
        delta = np.linalg.lstsq(gram[np.ix_(free, free)], rhs, rcond=None)[0]
        target = aa[free] + delta
        step = 1.0
        over = target > 1.0
        under = target < 0.0
        if over.any():
            step = min(step, float(np.min((1.0 - aa[free][over]) / delta[over])))
        if under.any():
            step = min(step, float(np.min(-aa[free][under] / delta[under])))
        d = step * delta
        aa[free] = np.clip(aa[free] + d, 0.0, 1.0)
        ma += gram[:, free] @ d
        if step >= 1.0:
            return


MAX_GAP = 1e-10  # a trained SVM whose exact gap is above this is refused
MAX_RADIUS = 1e-6  # a trained smooth model whose certified radius is above this is refused


def train_svm(k, y, wd: float, scale: int, k_test, y_test) -> tuple:
    """The SVM on all of (``k``, ``y``) from α = 0, certified (:func:`certificate`, with the
    test points' exact margins and hinge losses): (Certified, DualReport). Refused, in one
    line, when the exact gap stays above :data:`MAX_GAP`."""
    keep = np.ones(y.size, dtype=bool)
    alpha, report = solve_dual(k / scale, y, wd, np.zeros(y.size), keep)
    cert = certificate(k, y.astype(np.int64), alpha, wd, keep, k_test,
                       np.asarray(y_test).astype(np.int64), scale)
    if cert.gap > MAX_GAP:
        raise InflError(f"the SVM did not reach a certified optimum (duality gap "
                        f"{cert.gap:.1e} after {report.rounds} rounds)")
    return cert, report


# ----------------------------------------------------------------------------- smooth model
@dataclass
class Smooth:
    """A certified smooth-hinge model: ``weight``, ``grad_norm`` (float64 ‖∇R‖),
    ``grad_bound`` (≥ the exact ‖∇R‖, rounding included), ``radius`` (≥ ‖w − w*‖),
    ``steps`` (Newton steps)."""

    weight: np.ndarray
    grad_norm: float
    grad_bound: float
    radius: float
    steps: int


def smooth_objective(x, y, w, wd, t, keep):
    m = y * (x @ w)
    n = int(keep.sum())
    return float(np.sum(smooth_hinge(m[keep], t)) / n + 0.5 * wd * (w @ w))


def smooth_gradient(x, y, w, wd, t, keep, rounding: bool = False) -> tuple:
    """(∇R(w), margins, and with ``rounding`` a bound on the float64 rounding error of ∇R
    per entry, else None)."""
    n = int(keep.sum())
    m = y * (x @ w)
    coef = np.where(keep, y * smooth_hinge_d1(m, t), 0.0)
    grad = x.T @ coef / n + wd * w
    if not rounding:
        return grad, m, None
    # rounding (Higham's γ model, any summation order): the margins are off by
    # eᵢ ≤ γ_d |xᵢ|ᵀ|w|; ℓ' is 1/(4t)-Lipschitz and evaluated within 4u (σ: exp, +, ÷);
    # the sum over i is off by γ_n Σ|xᵢⱼ||coefᵢ|; wd·w and the final + by γ_2.
    d = x.shape[1]
    gam_d = d * UNIT / (1 - d * UNIT)
    gam_n = (n + 2) * UNIT / (1 - (n + 2) * UNIT)
    ax = np.abs(x)
    e_m = gam_d * (ax @ np.abs(w))
    e_coef = np.where(keep, e_m / (4.0 * t) + 4.0 * UNIT, 0.0)
    bound = (ax.T @ (e_coef + gam_n * np.abs(coef))) / n + 3 * UNIT * (wd * np.abs(w)
                                                                   + np.abs(grad))
    return grad, m, bound * (1 + 1e-6)


def smooth_hessian(x, y, m, wd, t, keep, drop: float = 1e-13) -> np.ndarray:
    """H = (1/N)Σ ℓ''(mᵢ)xᵢxᵢᵀ + wd·I, without the points whose curvature is below ``drop`` ×
    the largest (at small t the curvature lives on the few points near the margin, so this
    is fast; it is Newton's matrix only: every model is certified by its gradient)."""
    n = int(keep.sum())
    curv = np.where(keep, smooth_hinge_d2(m, t), 0.0)
    rows = np.flatnonzero(curv > drop * curv.max()) if curv.max() > 0 else np.arange(0)
    xr = x[rows]
    h = (xr.T * (curv[rows] / n)) @ xr
    h[np.diag_indices_from(h)] += wd
    return h


def test_gradient(x_test, y_test, w, t: float) -> np.ndarray:
    """∇ℓ_t(y wᵀx) of test points [T, d] (labels ±1 [T]; no regulariser)."""
    x_test = np.atleast_2d(x_test)
    y_test = np.atleast_1d(y_test)
    m = y_test * (x_test @ w)
    return (smooth_hinge_d1(m, t) * y_test)[:, None] * x_test


def predicted_from_ihvp(x, y, w, wd: float, t: float, s: np.ndarray) -> np.ndarray:
    """The predicted change of each test loss on removing each training point,
    (1/N)·sᵀ∇L(z) with s = H_t⁻¹∇L_test [T, d] and ∇L(z) = ℓ_t'(m_z)·y_z x_z + wd·w [T, N]
    (= −I_up,loss/N)."""
    s = np.atleast_2d(s)
    coef = smooth_hinge_d1(y * (x @ w), t) * y
    return (coef[None, :] * (s @ x.T) + wd * (s @ w)[:, None]) / x.shape[0]


def solve_h(x, y, w, wd: float, t: float, g: np.ndarray) -> tuple:
    """(H_t⁻¹g by a dense Cholesky of H_t at ``w`` [T, d], the residuals ‖H_t s − g‖ [T]):
    each s is proven within ‖H_t s − g‖/wd of the exact solve (H_t ⪰ wd·I)."""
    from scipy.linalg import cho_factor, cho_solve

    g = np.atleast_2d(g)
    h = smooth_hessian(x, y, y * (x @ w), wd, t, np.ones(y.size, dtype=bool), drop=0.0)
    s = cho_solve(cho_factor(h), g.T).T
    return s, np.linalg.norm(s @ h - g, axis=1)


def fit_smooth(x, y, wd, t, keep, start=None, tol=1e-14, max_steps=100,
               factor=None) -> Smooth:
    """Minimise R_t(w) = (1/N)Σ ℓ_t(yᵢ wᵀxᵢ) + (wd/2)‖w‖² over the points ``keep``: Newton
    with backtracking; with ``factor`` (a Cholesky factor of a nearby Hessian) the cheap
    fixed-curvature steps first, exact Newton only if they stall. Certified:
    ‖w − w*‖ ≤ (‖∇R‖ + rounding)/wd."""
    from scipy.linalg import cho_factor, cho_solve

    keep = np.asarray(keep, dtype=bool)
    w = np.zeros(x.shape[1]) if start is None else np.array(start, dtype=np.float64)
    steps = 0
    fixed = factor is not None  # until a fixed-curvature step gains less than 10×
    previous = math.inf
    while steps < max_steps:
        grad, m, _ = smooth_gradient(x, y, w, wd, t, keep)
        gnorm = float(np.linalg.norm(grad))
        if gnorm <= tol:
            break
        if fixed and gnorm > 0.1 * previous:
            fixed = False
        previous = gnorm
        steps += 1
        if fixed:
            direction = cho_solve(factor, grad)
        else:
            direction = cho_solve(cho_factor(smooth_hessian(x, y, m, wd, t, keep)), grad)
        base = smooth_objective(x, y, w, wd, t, keep)
        step = 1.0
        slope = float(grad @ direction)
        while step > 1e-8:
            trial = w - step * direction
            if smooth_objective(x, y, trial, wd, t, keep) <= base - 1e-4 * step * slope \
                    or gnorm < 1e-9:  # near the optimum the objective's rounding hides descent
                break
            step *= 0.5
        w = w - step * direction
    grad, _, bound = smooth_gradient(x, y, w, wd, t, keep, rounding=True)
    gnorm = float(np.linalg.norm(grad))
    gbound = float(np.linalg.norm(np.abs(grad) + bound)) * (1 + 1e-6)
    return Smooth(weight=w, grad_norm=gnorm, grad_bound=gbound, radius=gbound / wd, steps=steps)


def train_smooth(x, y, wd: float, t: float, start=None, tol: float = 1e-14) -> Smooth:
    """The smooth model on all of (``x``, ``y``) at temperature ``t`` (:func:`fit_smooth`),
    refused in one line when its certified radius stays above :data:`MAX_RADIUS`."""
    model = fit_smooth(x, y, wd, t, np.ones(y.size, dtype=bool), start=start, tol=tol)
    if model.radius > MAX_RADIUS:
        raise InflError(f"the smooth model at t = {t:g} did not converge (‖∇R‖ ≤ "
                        f"{model.grad_bound:.1e})")
    return model

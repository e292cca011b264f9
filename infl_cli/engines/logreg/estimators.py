"""The estimators the field compares, beside the IHVP solvers, for the logistic model at Ŵ.

Every estimator answers one question through one interface, :meth:`Estimator.influence`:
the [T, n] analogue of I_up,loss(z_i, z_t) for the model's T test points, in our sign (positive:
up-weighting z_i raises the test loss; the scores artifact's ``predicted_loss_diff`` is −I/n,
the predicted change of the test loss when z_i is removed). Their own papers' signs are noted
below; each is converted here, once.

Closed forms of the multinomial model (W [C, d], over the design's active features): the
per-example gradient of CE is r_i ⊗ x_i with r_i = p_i − e_{y_i}; our training-point gradient
∇L_i adds wd·Ŵ (a shift shared by every i: it changes no per-test ranking, no Pearson
correlation and, for subsets of one size, no LDS).

Curvature estimators replace H⁻¹ in I = −∇CE_tᵀ H⁻¹ ∇L_i by an approximation H̃⁻¹ and share
:func:`~infl_cli.engines.logreg.score.influence_scores` (one product of the design per pass):

* ``grad-dot``: H̃ = I: −∇CE_tᵀ∇L_i, TracIn with one checkpoint and unit step (Pruthi et al.
  2020; ``infl`` trains by full-batch Newton, so there is no SGD path to sum over).
* ``arnoldi``: Schioppa et al. 2022: H restricted to the span of its top ``rank`` eigenvectors,
  found by the Arnoldi iteration (Lanczos for symmetric H: Hessian-vector products, full
  reorthogonalisation, Rayleigh–Ritz on the Krylov basis).
* ``kfac``: H_CE ≈ S ⊗ A with S = mean(diag p_i − p_i p_iᵀ) [C, C], A = mean(x_i x_iᵀ)
  [d, d]; H̃ = S ⊗ A + (wd + damping)·I, inverted in the factors' eigenbasis.
* ``ekfac``: George et al. 2018, Grosse et al. 2023: the same eigenbasis Q_S ⊗ Q_A, the
  diagonal refit to the exact second moments in it, Λ_jk = mean_i (q_jᵀ C_i q_j)(a_kᵀ x_i)²
  with C_i = diag p_i − p_i p_iᵀ (the Fisher with labels drawn from the model, Kronfluence's
  default, in closed form: no sampling).
* ``datainf``: Kwon et al. 2024: (mean g_i g_iᵀ + λI)⁻¹ ≈ mean (g_i g_iᵀ + λI)⁻¹
  = (1/λ)(I − mean g_i g_iᵀ/(λ + ‖g_i‖²)), g_i the CE gradients; λ = wd + damping,
  damping by default DataInf's 0.1 × mean_i ‖g_i‖²/p.

The damping of ``kfac`` and ``ekfac`` defaults to Kronfluence's ``damping_factor`` (1e-8).

Similarity estimators:

* ``grad-cos``: the cosine of ∇CE_t and ∇CE_i, as Captum's and dattri's ``grad-cos``;
  I = −cos (aligned gradients: up-weighting lowers the test loss).
* ``representer``: Yeh et al. 2018: at the optimum of mean CE + (wd/2)‖W‖², Ŵ = Σ_i α_i x_iᵀ
  with α_i = −r_i/(n·wd), so the test logits decompose exactly as Ŵx_t = Σ_i α_i (x_iᵀx_t);
  the representer value of z_i for z_t is its share of the test label's logit,
  α_{i,y_t}(x_iᵀx_t) (positive: z_i supports the label), and I = −that value.
* ``trak``: Park et al. 2023: features φ_i = P∇m_i of the margin m = l_y − log Σ_{c≠y} e^{l_c}
  (∇m_i = (e_{y_i} − q_i) ⊗ x_i, q the softmax over the other classes), projected to
  ``proj_dim`` dimensions by a seeded Gaussian P; scores τ_t = φ_tᵀ(ΦᵀΦ)⁻¹Φᵀ diag(1 − p_{i,y_i})
  (positive: helps the test margin), and I = −τ. With ``models`` M > 1, the kernel products
  are averaged over M models retrained on random halves (:mod:`~infl_cli.engines.logreg.subsets`) and the
  reweighting by the mean of 1 − p over them, as TRAK's ensemble.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from infl_cli.engines.logreg import model
from infl_cli.engines.logreg import score as score_mod

KRONFLUENCE_DAMPING = 1e-8


@dataclass
class FittedModel:
    """What the estimators see: the model at Ŵ on the design's active features, its training
    residuals r = p − e_y [n, C] and the T test points' features and residuals."""

    weight: torch.Tensor  # [C, d] (all features), for influence_scores
    design: object
    y: torch.Tensor
    wd: float
    probs: torch.Tensor  # [n, C] at Ŵ
    x_test: torch.Tensor  # [T, d_a]
    y_test: torch.Tensor  # [T]

    def __post_init__(self):
        self.active = self.design.active.to(self.weight.device)
        self.w = self.weight[:, self.active]
        self.n = self.design.n
        self.classes = self.weight.shape[0]
        self.r = self.probs.clone()
        self.r[torch.arange(self.n, device=self.r.device), self.y] -= 1.0
        self.p_test = torch.softmax(self.x_test @ self.w.T, dim=1)
        self.r_test = self.p_test.clone()
        self.r_test[torch.arange(len(self.y_test), device=self.r.device), self.y_test] -= 1.0

    def test_grads(self) -> torch.Tensor:
        """∇CE at each test point [T, C, d_a] (r_t ⊗ x_t)."""
        return self.r_test[:, :, None] * self.x_test[:, None, :]

    def through(self, s: torch.Tensor) -> torch.Tensor:
        """−⟨s_t, ∇L_i⟩ for every test vector s [T, C, d_a] and training point: [T, n]."""
        full = torch.zeros((s.shape[0],) + tuple(self.weight.shape), dtype=s.dtype,
                           device=s.device)
        full[:, :, self.active] = s
        influence, _ = score_mod.influence_scores(self.weight, self.design, self.y, self.wd,
                                                  full, probs=self.probs)
        return influence

    def test_products(self) -> torch.Tensor:
        """x_iᵀx_t [n, T]."""
        return self.design.matmul(self.x_test.T.contiguous())

    def hvp(self, v: torch.Tensor) -> torch.Tensor:
        return model.hvp(self.w, self.design, self.wd, v, probs=self.probs)


class Estimator:
    """One estimator: its name, its knobs (:meth:`settings`) and its scores."""

    name = ""

    def settings(self) -> dict:
        return {}

    def influence(self, m: FittedModel) -> torch.Tensor:  # [T, n]
        raise NotImplementedError


class _Curvature(Estimator):
    """Estimators of the form −(H̃⁻¹∇CE_t)ᵀ∇L_i."""

    def inverse(self, m: FittedModel, v: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def influence(self, m: FittedModel) -> torch.Tensor:
        return m.through(self.inverse(m, m.test_grads()))


class GradDot(_Curvature):
    name = "grad-dot"

    def inverse(self, m, v):
        return v


class GradCos(Estimator):
    name = "grad-cos"

    def influence(self, m):
        dots = (m.r @ m.r_test.T) * m.test_products()  # [n, T]: ∇CE_i·∇CE_t
        train_norm = m.r.norm(dim=1) * m.design.row_sq_norms.to(m.r.dtype).sqrt()
        test_norm = m.r_test.norm(dim=1) * m.x_test.norm(dim=1)
        denominator = train_norm[:, None] * test_norm[None, :]
        cos = torch.where(denominator > 0, dots / denominator.clamp_min(1e-300),
                          torch.zeros_like(dots))
        return -cos.T


class Representer(Estimator):
    name = "representer"

    def influence(self, m):
        alpha = -m.r / (m.n * m.wd)  # [n, C]
        values = alpha[:, m.y_test] * m.test_products()  # [n, T]: α_{i,y_t} x_iᵀx_t
        return -values.T


@dataclass
class Arnoldi(_Curvature):
    rank: int = 100
    iterations: int | None = None  # default: rank + 50 (at most the dimension)
    seed: int = 0
    name = "arnoldi"

    def settings(self):
        return {"rank": self.rank, "iterations": self.iterations, "seed": self.seed}

    def eigenpairs(self, m: FittedModel):
        """The top ``rank`` Ritz pairs of H: (values [k], vectors [k, C, d_a])."""
        shape = tuple(m.w.shape)
        dim = math.prod(shape)
        steps = min(dim, self.iterations or self.rank + 50)
        gen = torch.Generator(device="cpu").manual_seed(self.seed)
        basis = torch.zeros((steps,) + shape, dtype=torch.float64, device=m.w.device)
        images = torch.zeros_like(basis)

        def fresh():
            return torch.randn(shape, generator=gen, dtype=torch.float64).to(m.w.device)

        v = fresh()
        for j in range(steps):
            for _ in range(2):  # full reorthogonalisation, twice is enough
                if j:
                    coeff = torch.einsum("kcd,cd->k", basis[:j], v)
                    v = v - torch.einsum("k,kcd->cd", coeff, basis[:j])
            norm = v.norm()
            if norm < 1e-8 * math.sqrt(dim):  # the Krylov space is invariant: restart
                v = fresh()
                for _ in range(2):
                    coeff = torch.einsum("kcd,cd->k", basis[:j], v)
                    v = v - torch.einsum("k,kcd->cd", coeff, basis[:j])
                norm = v.norm()
            basis[j] = v / norm
            images[j] = m.hvp(basis[j])
            v = images[j].clone()
        projected = torch.einsum("icd,jcd->ij", basis, images)
        values, vectors = torch.linalg.eigh(0.5 * (projected + projected.T))
        top = torch.argsort(values, descending=True)[:min(self.rank, steps)]
        ritz = torch.einsum("ik,icd->kcd", vectors[:, top], basis)
        return values[top], ritz

    def inverse(self, m, v):
        values, vectors = self.eigenpairs(m)
        coeff = torch.einsum("kcd,tcd->tk", vectors, v) / values[None, :]
        return torch.einsum("tk,kcd->tcd", coeff, vectors)


def kfac_factors(m: FittedModel):
    """(S [C, C], A [d_a, d_a]): the mean output curvature and the mean input second moment."""
    p = m.probs
    s = torch.diag(p.mean(dim=0)) - p.T @ p / m.n
    a = model.gram(m.design).to(p.device) / m.n
    return s, a


@dataclass
class KFac(_Curvature):
    damping: float = KRONFLUENCE_DAMPING
    name = "kfac"

    def settings(self):
        return {"damping": self.damping}

    def basis(self, m):
        s, a = kfac_factors(m)
        ls, qs = torch.linalg.eigh(s)
        la, qa = torch.linalg.eigh(a)
        return qs, qa, ls.clamp_min(0)[:, None] * la.clamp_min(0)[None, :]

    def inverse(self, m, v):
        qs, qa, diagonal = self.basis(m)
        rotated = torch.einsum("ca,tcd,de->tae", qs, v, qa)
        rotated = rotated / (diagonal + m.wd + self.damping)[None]
        return torch.einsum("ca,tae,de->tcd", qs, rotated, qa)


@dataclass
class EKFac(KFac):
    name = "ekfac"

    def basis(self, m):
        qs, qa, _ = super().basis(m)
        return qs, qa, ekfac_diagonal(m, qs, qa)


def ekfac_diagonal(m: FittedModel, qs: torch.Tensor, qa: torch.Tensor) -> torch.Tensor:
    """Λ [C, d_a]: the exact second moments of the (model-label) gradients in the basis
    Q_S ⊗ Q_A, mean_i (q_jᵀ C_i q_j)·(a_kᵀ x_i)² (module doc), in blocks of rows."""
    p = m.probs
    out = torch.zeros((qs.shape[1], qa.shape[1]), dtype=torch.float64, device=p.device)
    block = 4096
    for lo in range(0, m.n, block):
        hi = min(lo + block, m.n)
        x = m.design.rows(torch.arange(lo, hi).numpy()).to(p.device)
        u = (x @ qa).square()  # [b, d_a]
        pb = p[lo:hi]
        curvature = pb @ qs.square() - (pb @ qs).square()  # [b, C]: q_jᵀ C_i q_j
        out += curvature.T @ u
    return out / m.n


@dataclass
class DataInf(_Curvature):
    damping: float | None = None  # default: 0.1 × mean ‖g_i‖²/p
    name = "datainf"

    def settings(self):
        return {"damping": self.damping}

    def lam(self, m) -> float:
        sq = m.r.square().sum(dim=1) * m.design.row_sq_norms.to(m.r.dtype)  # ‖g_i‖²
        damping = self.damping if self.damping is not None else \
            0.1 * float(sq.mean()) / m.w.numel()
        return m.wd + damping, sq

    def inverse(self, m, v):
        lam, sq = self.lam(m)
        t, c, d = v.shape
        # g_iᵀv_t = Σ_c r_ic (x_i·v_tc): one product of the design with the T·C rows
        proj = m.design.matmul(v.reshape(t * c, d).T.contiguous()).view(m.n, t, c)
        dots = torch.einsum("ntc,nc->nt", proj, m.r)  # [n, T]
        weights = dots / (lam + sq)[:, None]  # [n, T]
        back = m.design.rmatmul((weights[:, :, None] * m.r[:, None, :]).reshape(m.n, t * c))
        return (v - back.view(t, c, d) / m.n) / lam


@dataclass
class Trak(Estimator):
    proj_dim: int = 512
    seed: int = 0
    models: int = 1
    name = "trak"
    PROJ_BLOCK = 64
    feature_dtype = torch.float32

    def settings(self):
        return {"proj_dim": self.proj_dim, "seed": self.seed, "models": self.models}

    def projection(self, m) -> torch.Tensor:
        gen = torch.Generator(device="cpu").manual_seed(self.seed)
        p = torch.randn((self.proj_dim,) + tuple(m.w.shape), generator=gen,
                        dtype=torch.float64)
        return p.to(m.w.device) / math.sqrt(self.proj_dim)

    @staticmethod
    def margin_coefficients(probs: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """a_i = e_{y_i} − q_i [n, C] (∇m_i = a_i ⊗ x_i), q the softmax over the others."""
        rows = torch.arange(len(y), device=probs.device)
        q = probs.clone()
        q[rows, y] = 0.0
        q = q / q.sum(dim=1, keepdim=True).clamp_min(1e-300)
        a = -q
        a[rows, y] = 1.0
        return a

    def features(self, m, probs_list, proj) -> list:
        """Φ [n, k] for each model's probabilities: P∇m_i for every training point. The
        products of the design with the projections (one per block of them, in
        :attr:`feature_dtype`: float32 by default, as TRAK's own projections; the kernels and
        their solves are float64) are shared by the models of one call."""
        coefficients = [self.margin_coefficients(p, m.y).to(self.feature_dtype)
                        for p in probs_list]
        k, c, d = proj.shape
        phis = [torch.empty((m.n, k), dtype=torch.float64, device=proj.device)
                for _ in probs_list]
        for lo in range(0, k, self.PROJ_BLOCK):
            hi = min(lo + self.PROJ_BLOCK, k)
            block = proj[lo:hi].reshape((hi - lo) * c, d).T.contiguous()
            xp = m.design.matmul(block.to(self.feature_dtype)).view(m.n, hi - lo, c)
            for phi, a in zip(phis, coefficients):
                phi[:, lo:hi] = torch.einsum("nkc,nc->nk", xp, a)
        return phis

    def scores_at(self, m, weight_active, probs, phi, proj):
        """(φ_t(ΦᵀΦ)⁻¹Φᵀ [T, n], 1 − p_{i,y_i} [n]) at one model, its features Φ given."""
        p_test = torch.softmax(m.x_test @ weight_active.T, dim=1)
        a_test = self.margin_coefficients(p_test, m.y_test)
        grads_test = a_test[:, :, None] * m.x_test[:, None, :]  # ∇m_t [T, C, d_a]
        phi_test = grads_test.reshape(len(m.y_test), -1) @ proj.reshape(len(proj), -1).T
        solved = torch.linalg.solve(phi.T @ phi, phi_test.T)  # [k, T]
        weights = 1.0 - probs[torch.arange(m.n, device=probs.device), m.y]
        return (phi @ solved).T, weights

    def influence(self, m, models=None):
        """``models``: [(weight over the active features, probabilities [n, C])] of the
        ensemble (default: Ŵ alone), their features made :data:`FEATURE_BYTES` at a time."""
        proj = self.projection(m)
        models = models or [(m.w, m.probs)]
        group = max(1, int(FEATURE_BYTES // (m.n * self.proj_dim * 8)))
        total, weights = 0.0, 0.0
        for lo in range(0, len(models), group):
            chunk = models[lo:lo + group]
            phis = self.features(m, [p for _, p in chunk], proj)
            for (weight_active, probs), phi in zip(chunk, phis):
                products, q = self.scores_at(m, weight_active, probs, phi, proj)
                total = total + products
                weights = weights + q
            del phis
        tau = (total / len(models)) * (weights / len(models))[None, :]
        return -tau


FEATURE_BYTES = 0.7e9  # TRAK: the float64 features of the models made together


ESTIMATORS = {cls.name: cls for cls in (GradDot, GradCos, Representer, Arnoldi, KFac, EKFac,
                                         DataInf, Trak)}

"""The seam between the stages and a model kind: the interface every engine implements.

A stage picks the engine once, from the kind recorded in ``model.safetensors``
(:func:`~infl_cli.engines.engine_for`), and from then on only calls these methods, with the
same arguments whatever the kind; what differs between kinds is asked of the policy's
capabilities (:mod:`~infl_cli.engines.policy`), never of its name. Tensors are engine-shaped
(the logistic model's W [C, d], the CNN's flat θ [P], the SVM's w [d]) and live on the data's
device. ``keeper`` is the work folder's store of kept matrices
(:class:`~infl_cli.runtime.kept.Keeper`, or None); an engine that keeps nothing ignores it.

Torch-free: this module declares the interface only.
"""

from __future__ import annotations

from infl_cli.engines.policy import Policy


class Engine(Policy):
    """What every model kind answers (see the module doc)."""

    tensor_names: tuple = ()

    def describe(self, spec) -> str:
        """A one-line description of the model, for its record."""
        raise NotImplementedError

    def fit(self, data, wd: float, tol: float, max_iter: int, spec):
        """Train on ``data``: (tensors, info), info holding the certificate's figures."""
        raise NotImplementedError

    def certificate(self, tensors, mrec):
        """What training proved and kept with the model (the logistic model's certified
        gradient at Ŵ), for the later stages to reuse; None where nothing is kept."""
        return None

    def probabilities(self, tensors, x):
        """Class probabilities [m, C] of inputs x."""
        raise NotImplementedError

    def test_gradients(self, tensors, x, y):
        """∇CE(z_test) per test point (no regulariser), engine-shaped [T, ...]."""
        raise NotImplementedError

    def operator(self, tensors, mrec, data, keeper=None):
        """The model's curvature at its trained point, as the inverse-HVP solvers use it
        (:class:`~infl_cli.numerics.solvers.Operator`)."""
        raise NotImplementedError

    def solve(self, tensors, mrec, data, solver, rhs, keeper=None):
        """H⁻¹·rhs by ``solver`` (:mod:`~infl_cli.numerics.solvers`): (estimate, report with
        its error figures)."""
        return solver.solve(self.operator(tensors, mrec, data, keeper), rhs)

    def scores(self, tensors, mrec, data, ihvps):
        """(I_up,loss [T, n], the predicted change −I/n) from the inverse-HVPs."""
        raise NotImplementedError

    def loo_problem(self, tensors, mrec, data, x_test, y_test, settings, on_block=None,
                    keeper=None):
        """An object whose ``solve_chunk(removed, selected, settings)`` retrains without a
        chunk of removals (any order, resumable: :mod:`~infl_cli.runtime.chunks`)."""
        raise NotImplementedError

    def auto_chunk_size(self, device, spec, data, settings) -> int:
        """Removals per chunk for ``--chunk-size auto``."""
        raise NotImplementedError

    def result_keys(self, settings) -> tuple:
        """Per-removal results beyond the common ones that this engine's chunks return."""
        return ()

    def loo_summary(self, arrays, settings) -> dict:
        """What the LOO record says of its error figures."""
        return {"error_kind": "certified"}

    def check_memory(self, step: str, data, what: str, **shape) -> None:
        """Refuse ``step`` (train, ihvp-<solver>, score, loo, self-influence, lds) in one
        line, before it starts, when its estimated peak exceeds the memory budget; a kind
        without estimates checks nothing here (its dense paths check their own)."""

    def hessian_blocks(self, tensors) -> int:
        """Progress units of building the LOO problem."""
        return 1

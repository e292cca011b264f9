"""Numerics that know no model: proven rounding bounds and exact sums, conjugate gradients and
the batched vector helpers, the inverse-HVP solvers and their CG and LiSSA loops over an
engine's curvature, Newton's method with step halving, and the rank statistics of the field's
benchmarks."""

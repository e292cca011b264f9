"""Numerics that know no model: proven rounding bounds, conjugate gradients and the batched
vector helpers, and the rank statistics of the field's benchmarks."""

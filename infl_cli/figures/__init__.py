"""The figures (matplotlib, Agg): Figure 2's panels, the explanation images, the studies' and
the benchmarks' figures. They read NumPy arrays and records, never torch."""

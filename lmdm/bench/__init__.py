"""Cost: the analytic FLOP model, the side-by-side benchmark, and the discrete autoregressive LMM baseline it measures against."""

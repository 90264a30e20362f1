"""Measuring streams: the embedding classifier and drift over time.

One concept per module, imported in this order (no module imports one later in the list):

* ``embedder`` — the small audio classifier whose penultimate layer is the embedding; saving and loading it;
* ``drift`` — the per-window metrics (Fréchet distance, loudness, flatness, mel distance, pitch-class entropy);
* ``reference`` — statistics of real music (a data set's validation split) that windows are compared against;
* ``embedder_training`` — ``lmdm metrics train-embedder``: train the embedder and store its reference beside it;
* ``report`` — ``lmdm drift``: stream, measure every window, tabulate and plot.
"""

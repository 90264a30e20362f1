"""Measuring streams: the embedding classifier and drift over time.

One concept per module, imported in this order (no module imports one later in the list):

* ``embedder`` — the small audio classifier whose penultimate layer is the embedding; saving and loading it;
* ``drift`` — latent-frame statistics (Fréchet distance, loudness, flatness, mel distance, pitch-class entropy),
  now used only for the summary ``lmdm metrics train-embedder`` stores beside the embedder;
* ``reference`` — those latent statistics of real music (a data set's validation split), stored with the embedder;
* ``embedder_training`` — ``lmdm metrics train-embedder``: train the embedder and store its reference beside it;
* ``report`` — ``lmdm drift``: stream, decode, measure every window with the lenses of ``lmdm.eval`` (level,
  notes, KAD) against a band of real validation music, tabulate and plot.
"""

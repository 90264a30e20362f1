"""Measuring streams over time: the embedding classifier and drift.

One concept per module, imported in this order (no module imports one later in the list):

* ``embedder`` — the small audio classifier whose penultimate layer is the embedding of the distribution lens;
  saving and loading it;
* ``embedder_training`` — ``lmdm metrics train-embedder`` on the one training loop;
* ``report`` — ``lmdm drift``: stream, decode, measure every window with the lenses of ``lmdm.eval`` (level,
  notes, KAD) against a band of real validation music, tabulate and plot.
"""

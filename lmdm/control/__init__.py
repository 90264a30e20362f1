"""Control signals: per-frame features (pitch, voicing, onsets, loudness), drawn sketches, and how closely output follows them."""

"""Building the real-music training set from the music21 corpus (``lmdm data build``)."""

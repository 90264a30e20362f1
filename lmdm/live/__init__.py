"""The live engine: a background generation session fed by audio chunks (microphone, file, widget)."""

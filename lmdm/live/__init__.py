"""The live engine: a background generation session fed by audio chunks (microphone, file, widget), and the live
view: one small log-mel + loudness message per block (``view``) for the browser to draw."""

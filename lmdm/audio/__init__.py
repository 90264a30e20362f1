"""Audio: file I/O, the one sanitiser, the mel codec, Griffin-Lim, the streaming decoder and seam crossfades."""

"""Streaming generation: streamers over one DiT, seam-free audio decoding, timing."""

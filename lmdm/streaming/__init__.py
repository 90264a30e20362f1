"""Streaming generation: streamers over one DiT (outpainting, enc-dec, block-causal with KV cache), the generate job, timing."""

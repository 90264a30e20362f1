"""lmdm: Live Music Diffusion Models — streaming music diffusion with block-wise KV caching, small enough for a CPU."""

__version__ = "0.1.0"

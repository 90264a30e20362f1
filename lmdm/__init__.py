"""lmdm: Live Music Diffusion Models — streaming music diffusion with block-wise KV caching, small enough for a CPU."""
import os as _os

# numba (under librosa) caches compiled kernels; keep them in one user-writable place for every lmdm process
# (see lmdm.librosa_warmup for why they are compiled once, up front). Must be set before numba is imported.
_os.environ.setdefault("NUMBA_CACHE_DIR", _os.path.join(_os.path.expanduser("~"), ".cache", "lmdm", "numba"))

__version__ = "0.1.0"

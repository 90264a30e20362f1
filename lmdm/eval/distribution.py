"""Distances between two sets of vectors, each reported with its sample sizes and dimension (DESIGN.md section 7).

The sets are ``(n, d)`` float arrays, one vector per row (e.g. one embedding per non-overlapping window of distinct
pieces). ``x`` is the set under test, ``y`` the reference. Sources:

* KAD: the unbiased MMD^2 of Gretton et al. 2012 ("A Kernel Two-Sample Test", JMLR, eq. 3: diagonal terms
  excluded) with a Gaussian RBF kernel whose bandwidth is the median pairwise distance of the reference, as in
  Chung et al. 2025 ("KAD: No More FAD! An Effective and Efficient Evaluation Metric for Audio Generation").
  Reported unscaled; the kadtk tool prints 100x this number.
* FD: the Frechet distance between Gaussians fitted to the sets (Dowson & Landau 1982; FAD, Kilgour et al. 2019).
  Its estimate from N samples is inflated by roughly c/N, so FD-infinity (Chong & Forsyth 2020, "Effectively
  Unbiased FID and Inception Score and where to find them", section 3) extrapolates FD over subset sizes to 1/N = 0.
* Confidence intervals: for KAD the percentile bootstrap (Efron & Tibshirani 1993, ch. 13) resampling both sets,
  with the pairs of copies a resample makes left out; for FD and FD-infinity half-sampling without replacement,
  because repeated rows inflate FD's small-sample bias (see :func:`bootstrap_ci`).
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy.linalg import sqrtm
from scipy.spatial.distance import cdist, pdist

from lmdm.errors import LmdmError, UsageError

SQRTM_IMAG_TOLERANCE = 1e-3  # largest |imag| of sqrtm(S1 S2) accepted, relative to its trace


class DistributionError(UsageError):
    """Sets given to a distribution distance are not finite (n, d) arrays of matching width, or are too small."""


class FrechetError(LmdmError, RuntimeError):
    """The matrix square root in the Frechet distance came out with a large imaginary part: the covariances are too
    near singular for the number of samples (reduce the dimension with PCA or use more samples)."""


def _check_set(a, name: str, min_rows: int = 2) -> np.ndarray:
    a = np.asarray(a)
    if a.ndim != 2 or not np.issubdtype(a.dtype, np.number) or np.iscomplexobj(a):
        raise DistributionError(f"{name} must be a real (n, d) array, got shape {a.shape} {a.dtype}")
    if len(a) < min_rows:
        raise DistributionError(f"{name} needs at least {min_rows} rows (vectors), got {len(a)}")
    a = a.astype(np.float64)
    if not np.all(np.isfinite(a)):
        raise DistributionError(f"{name} contains NaN or infinite values")
    return a


def _check_pair(x, y, min_rows: int = 2) -> tuple[np.ndarray, np.ndarray]:
    x, y = _check_set(x, "x", min_rows), _check_set(y, "y", min_rows)
    if x.shape[1] != y.shape[1]:
        raise DistributionError(f"x and y must have the same width d, got {x.shape[1]} and {y.shape[1]}")
    return x, y


def _rng(rng) -> np.random.Generator:
    return rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)


# ----------------------------------------------------------------------------------------------------------- KAD


def median_bandwidth(reference) -> float:
    """The median Euclidean distance between distinct rows of ``reference`` ``(n, d)``, n >= 2: the RBF bandwidth
    of KAD (Chung et al. 2025). Raises DistributionError for bad input or when every row is identical."""
    y = _check_set(reference, "reference")
    sigma = float(np.median(pdist(y)))
    if not sigma > 0:
        raise DistributionError("the median pairwise distance of the reference is 0 (its rows are identical)")
    return sigma


def _kernel(a: np.ndarray, b: np.ndarray, sigma: float) -> np.ndarray:
    return np.exp(-cdist(a, b, "sqeuclidean") / (2.0 * sigma * sigma))


def _mmd2_resampled(kxx, kyy, kxy, ix: np.ndarray, iy: np.ndarray) -> float:
    """Unbiased MMD^2 of the sets x[ix], y[iy] from full kernel matrices: within-set pairs with the same index
    (the diagonal, and the copies a bootstrap resample draws) are left out, cross pairs are all kept."""
    def within(k, i):
        keep = i[:, None] != i[None, :]
        return float(k[np.ix_(i, i)][keep].mean()) if keep.any() else math.nan

    return within(kxx, ix) + within(kyy, iy) - 2.0 * float(kxy[np.ix_(ix, iy)].mean())


def kad(x, y, bandwidth: float | None = None) -> float:
    """Kernel audio distance: the unbiased MMD^2 between sets ``x`` ``(m, d)`` and ``y`` ``(n, d)``, m, n >= 2.

    k(a, b) = exp(-|a - b|^2 / (2 sigma^2)); sigma = ``bandwidth``, or the median pairwise distance of the
    reference ``y`` when None. MMD^2_u = mean_{i != j} k(x_i, x_j) + mean_{i != j} k(y_i, y_j)
    - 2 mean_{i, j} k(x_i, y_j) (Gretton et al. 2012, eq. 3; Chung et al. 2025). Unitless, unbiased, so it can be
    slightly negative when the sets come from one distribution. Raises DistributionError for bad input or a
    non-positive bandwidth.
    """
    x, y = _check_pair(x, y)
    sigma = median_bandwidth(y) if bandwidth is None else float(bandwidth)
    if not sigma > 0:
        raise DistributionError(f"bandwidth must be positive, got {bandwidth!r}")
    return _mmd2_resampled(_kernel(x, x, sigma), _kernel(y, y, sigma), _kernel(x, y, sigma),
                           np.arange(len(x)), np.arange(len(y)))


# ------------------------------------------------------------------------------------------------------------ FD


def frechet_from_stats(mu1, sigma1, mu2, sigma2, imag_tolerance: float = SQRTM_IMAG_TOLERANCE) -> float:
    """Frechet distance between N(mu1, sigma1) and N(mu2, sigma2), means ``(d,)`` and covariances ``(d, d)``:
    |mu1 - mu2|^2 + tr(sigma1 + sigma2 - 2 sqrtm(sigma1 sigma2)) (Dowson & Landau 1982), in squared units of
    the vectors.

    ``scipy.linalg.sqrtm`` may return a complex matrix when the product is near singular; its imaginary part is
    checked, not dropped: if max |imag| exceeds ``imag_tolerance`` times max(1, |trace|) it raises FrechetError.
    Raises DistributionError for mismatched shapes.
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    d = len(mu1)
    if mu2.shape != (d,) or s1.shape != (d, d) or s2.shape != (d, d):
        raise DistributionError(f"means must be (d,) and covariances (d, d): got {mu1.shape}, {s1.shape}, "
                                f"{mu2.shape}, {s2.shape}")
    covmean = sqrtm(s1 @ s2)
    if not np.all(np.isfinite(covmean)):
        raise FrechetError("sqrtm(sigma1 sigma2) is not finite: the covariances are singular")
    if np.iscomplexobj(covmean):
        imag = float(np.max(np.abs(covmean.imag)))
        scale = max(1.0, abs(float(np.trace(covmean.real))))
        if imag > imag_tolerance * scale:
            raise FrechetError(f"sqrtm(sigma1 sigma2) has an imaginary part of {imag:.3g} against a trace of "
                               f"{scale:.3g}: the covariances are too near singular for their sample size; "
                               "reduce the dimension with PCA or use more samples")
        covmean = covmean.real
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * np.trace(covmean))


def _stats(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return a.mean(axis=0), np.atleast_2d(np.cov(a, rowvar=False))


def frechet_distance(x, y, imag_tolerance: float = SQRTM_IMAG_TOLERANCE) -> float:
    """Frechet distance between Gaussians fitted (sample mean, unbiased sample covariance) to ``x`` ``(m, d)`` and
    ``y`` ``(n, d)``, m, n >= 2; the FAD of Kilgour et al. 2019 when the rows are embeddings. Biased upward by
    about c/N at N samples (see :func:`fd_infinity`); needs N well above d (use :func:`pca_fit`).
    Raises DistributionError for bad input and FrechetError when sqrtm's imaginary part is not negligible.
    """
    x, y = _check_pair(x, y)
    return frechet_from_stats(*_stats(x), *_stats(y), imag_tolerance=imag_tolerance)


@dataclass(frozen=True)
class FDInfinity:
    """FD extrapolated to infinitely many samples: fd_at_n ~= value + slope / n, fitted by least squares.

    value: FD-infinity, the intercept at 1/N = 0. slope: c, in FD units times samples. ns: subset sizes of x.
    fds: FD measured at each size. resample_reference: whether y was subsampled in proportion too.
    """

    value: float
    slope: float
    ns: tuple[int, ...]
    fds: tuple[float, ...]
    resample_reference: bool


def default_sizes(n: int, d: int, count: int = 5) -> tuple[int, ...]:
    """``count`` subset sizes evenly spaced from max(n // 5, 2 d + 2) to n for FD-infinity of a set of n vectors
    of width d (Chong & Forsyth 2020 use 15 sizes from 5,000 to 50,000 at d = 2048). Raises DistributionError when
    n is too small for that (fewer than 2 distinct sizes)."""
    n_min = max(n // 5, 2 * d + 2)
    sizes = tuple(sorted({round(v) for v in np.linspace(n_min, n, count)}))
    if n_min >= n or len(sizes) < 2:
        raise DistributionError(f"FD-infinity needs n well above 2 d: n = {n}, d = {d}; reduce d with PCA")
    return sizes


def fd_infinity(x, y, ns=None, rng=None, resample_reference: bool = False) -> FDInfinity:
    """FD-infinity (Chong & Forsyth 2020, section 3) between ``x`` ``(m, d)`` and the reference ``y`` ``(n, d)``.

    For each size N in ``ns`` (default :func:`default_sizes`), FD is measured between a random subset of N rows
    of x (drawn without replacement) and y, and FD = FD_inf + c / N is fitted by least squares; FD_inf is the
    intercept. As in the paper, y is used whole, so its own finite-size bias stays in the result (keep it large);
    with ``resample_reference=True`` y is subsampled to the same fraction as x, which extrapolates both biases away
    (FD's bias is c_x / N_x + c_y / N_y, which is proportional to 1 / N when both shrink together).
    Raises DistributionError for bad input or sizes outside [2, m], FrechetError as :func:`frechet_distance`.
    """
    x, y = _check_pair(x, y)
    rng = _rng(rng)
    ns = default_sizes(len(x), x.shape[1]) if ns is None else tuple(sorted({int(v) for v in ns}))
    if len(ns) < 2 or ns[0] < 2 or ns[-1] > len(x):
        raise DistributionError(f"ns must hold at least 2 distinct sizes in [2, {len(x)}], got {ns}")
    mu_y, s_y = _stats(y)
    fds = []
    for n in ns:
        sub = x[rng.choice(len(x), n, replace=False)]
        if resample_reference:
            k = max(2, round(len(y) * n / len(x)))
            mu_y, s_y = _stats(y[rng.choice(len(y), k, replace=False)])
        fds.append(frechet_from_stats(*_stats(sub), mu_y, s_y))
    design = np.stack([np.ones(len(ns)), 1.0 / np.asarray(ns, np.float64)], axis=1)
    (value, slope), *_ = np.linalg.lstsq(design, np.asarray(fds), rcond=None)
    return FDInfinity(float(value), float(slope), ns, tuple(fds), resample_reference)


# ----------------------------------------------------------------------------------------------------------- PCA


@dataclass(frozen=True)
class PCA:
    """A PCA fitted on a reference set: ``apply(a)`` maps ``(k, d)`` rows to ``(k, dim)``.

    mean: ``(d,)``. components: ``(dim, d)``, orthonormal rows, largest variance first. explained_variance_ratio:
    fraction of the reference's total variance each component keeps, ``(dim,)``. n_reference: rows it was fitted on.
    """

    mean: np.ndarray
    components: np.ndarray
    explained_variance_ratio: np.ndarray
    n_reference: int

    @property
    def dim(self) -> int:
        return int(self.components.shape[0])

    def apply(self, a) -> np.ndarray:
        """Project ``a`` ``(k, d)`` onto the components: ``(k, dim)``. Raises DistributionError for a wrong width."""
        a = _check_set(a, "a", min_rows=0)
        if a.shape[1] != len(self.mean):
            raise DistributionError(f"PCA was fitted on width {len(self.mean)}, got width {a.shape[1]}")
        return (a - self.mean) @ self.components.T


def max_pca_dim(n: int) -> int:
    """The largest PCA dimension allowed for n reference vectors: n // 10 (ten samples per dimension keep the
    covariance estimate, and so FD, from being dominated by its c/N bias)."""
    return n // 10


def pca_fit(reference, dim: int) -> PCA:
    """PCA of ``reference`` ``(n, d)`` (numpy SVD of the centred rows) keeping ``dim`` components, fitted on the
    reference only so that both sets are projected the same way. Enforces 1 <= dim <= min(d, n // 10); raises
    DistributionError otherwise or for bad input."""
    y = _check_set(reference, "reference")
    cap = min(y.shape[1], max_pca_dim(len(y)))
    if not 1 <= int(dim) <= cap:
        raise DistributionError(f"PCA dim must be in [1, min(d, n // 10)] = [1, {cap}] for a reference of "
                                f"{len(y)} vectors of width {y.shape[1]}, got {dim}")
    mean = y.mean(axis=0)
    _, s, vt = np.linalg.svd(y - mean, full_matrices=False)
    var = s * s
    total = float(var.sum())
    ratio = var[:dim] / total if total > 0 else np.zeros(dim)
    return PCA(mean, vt[:dim].copy(), ratio, len(y))


# ----------------------------------------------------------------------------------------------------- bootstrap


def _percentile_ci(values, alpha: float) -> tuple[float, float]:
    v = np.asarray(values, np.float64)
    v = v[np.isfinite(v)]
    if len(v) == 0:
        return (math.nan, math.nan)
    lo, hi = np.percentile(v, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return (float(lo), float(hi))


def _check_boot(n_boot: int, alpha: float) -> None:
    if int(n_boot) < 1 or not 0 < alpha < 1:
        raise DistributionError(f"need n_boot >= 1 and 0 < alpha < 1, got {n_boot}, {alpha}")


def bootstrap_ci(statistic: Callable[[np.ndarray, np.ndarray], float], x, y, n_boot: int = 200,
                 alpha: float = 0.05, rng=None) -> tuple[float, float]:
    """Percentile bootstrap (1 - alpha) interval of ``statistic(x*, y*)``, where x* and y* resample the rows of
    ``x`` ``(m, d)`` and ``y`` ``(n, d)`` with replacement, independently, ``n_boot`` times.

    Only for statistics that repeated rows do not bias. A resample holds about 63 % distinct rows, which inflates
    FD's c/N bias: measured on 300 vs 300 draws of N(0, I_8), FD = 0.175 with a percentile interval of
    (0.22, 0.48), wholly above the estimate. Use :func:`half_sample_ci` for FD and FD-infinity and
    :func:`kad_bootstrap_ci` for KAD. Resamples where the statistic raises FrechetError count as NaN and are left
    out. Returns (low, high); raises DistributionError for bad input.
    """
    x, y = _check_pair(x, y, min_rows=1)
    _check_boot(n_boot, alpha)
    rng = _rng(rng)
    values = []
    for _ in range(int(n_boot)):
        ix, iy = rng.integers(0, len(x), len(x)), rng.integers(0, len(y), len(y))
        try:
            values.append(statistic(x[ix], y[iy]))
        except FrechetError:
            values.append(math.nan)
    return _percentile_ci(values, alpha)


def half_sample_ci(statistic: Callable[[np.ndarray, np.ndarray], float], x, y, n_boot: int = 200,
                   alpha: float = 0.05, rng=None, estimate: float | None = None) -> tuple[float, float]:
    """(1 - alpha) interval of ``statistic`` between ``x`` ``(m, d)`` and ``y`` ``(n, d)`` by half-sampling:
    ``n_boot`` times, draw half of the rows of each set without replacement (no repeated rows, so no extra bias)
    and evaluate the statistic. Sampling half of a finite set without replacement varies an average-like
    statistic by sigma^2 (2/m - 1/m) = sigma^2 / m, the same as drawing a fresh full-size set (McCarthy 1969,
    "Pseudo-replication: half samples"; Politis & Romano 1994 subsampling). The interval is
    ``estimate`` + the (alpha/2, 1 - alpha/2) quantiles of the half-sample values minus their median, so it shows
    the spread at this N around the full-set ``estimate`` (computed when None); a statistic biased by c/N keeps
    its bias (FD), an extrapolated one (FD-infinity) does not add one. Near zero, where FD between equal
    distributions is a second-order statistic whose spread scales as 1/N, the interval is wider than needed. Half-samples where the statistic raises
    FrechetError or DistributionError are left out. Returns (low, high); raises DistributionError for bad input
    or sets of fewer than 4 rows.
    """
    x, y = _check_pair(x, y, min_rows=4)
    _check_boot(n_boot, alpha)
    rng = _rng(rng)
    center = float(statistic(x, y)) if estimate is None else float(estimate)
    values = []
    for _ in range(int(n_boot)):
        ix = rng.choice(len(x), len(x) // 2, replace=False)
        iy = rng.choice(len(y), len(y) // 2, replace=False)
        try:
            values.append(statistic(x[ix], y[iy]))
        except (FrechetError, DistributionError):
            values.append(math.nan)
    v = np.asarray(values, np.float64)
    v = v[np.isfinite(v)]
    if len(v) == 0:
        return (math.nan, math.nan)
    lo, hi = _percentile_ci(v - np.median(v), alpha)
    return (center + lo, center + hi)


def kad_bootstrap_ci(x, y, bandwidth: float | None = None, n_boot: int = 200, alpha: float = 0.05,
                     rng=None) -> tuple[float, float]:
    """Percentile bootstrap (1 - alpha) interval of :func:`kad` between ``x`` ``(m, d)`` and ``y`` ``(n, d)``.

    Both sets are resampled by index with replacement; the bandwidth is fixed from the whole reference. A resample
    repeats rows, and a row paired with its own copy has k = 1, which would bias the within-set means and break the
    unbiased estimator's independence; such identical-index pairs are left out, as the diagonal is in :func:`kad`.
    Returns (low, high); raises DistributionError for bad input.
    """
    x, y = _check_pair(x, y)
    _check_boot(n_boot, alpha)
    rng = _rng(rng)
    sigma = median_bandwidth(y) if bandwidth is None else float(bandwidth)
    kxx, kyy, kxy = _kernel(x, x, sigma), _kernel(y, y, sigma), _kernel(x, y, sigma)
    values = [_mmd2_resampled(kxx, kyy, kxy, rng.integers(0, len(x), len(x)), rng.integers(0, len(y), len(y)))
              for _ in range(int(n_boot))]
    return _percentile_ci(values, alpha)


# ------------------------------------------------------------------------------------------------------- report


def compare_sets(x, y, fd_dim: int | None = None, n_boot: int = 200, alpha: float = 0.05, rng=None,
                 fd_sizes=None) -> dict:
    """Every distance between the set under test ``x`` ``(m, d)`` and the reference ``y`` ``(n, d)``, each with
    what it rests on. Returns a dict:

    n_x, n_y, dim (the input width d); kad: {value, ci, bandwidth, dim} on the full vectors; fd: {value, ci, dim};
    fd_inf: {value, ci, slope, ns, dim}; pca: {dim, requested, cap, capped, explained_variance} (None when FD runs
    on the full width); n_boot, alpha; notes: strings saying what was capped or failed.

    FD and FD-infinity run in a PCA space fitted on y with dim = min(fd_dim or d, d, min(m, n) // 10): the cap
    keeps ten samples per dimension and is reported, never silent. A FrechetError becomes a NaN value and a note.
    With fewer than 10 rows in a set, FD and FD-infinity are NaN with a note (KAD is still reported).
    Raises DistributionError for bad input.
    """
    x, y = _check_pair(x, y)
    rng = _rng(rng)
    d, notes = x.shape[1], []
    sigma = median_bandwidth(y)
    report = {
        "n_x": len(x), "n_y": len(y), "dim": d, "n_boot": int(n_boot), "alpha": float(alpha),
        "kad": {"value": kad(x, y, sigma), "ci": kad_bootstrap_ci(x, y, sigma, n_boot, alpha, rng),
                "bandwidth": sigma, "dim": d},
    }
    requested = d if fd_dim is None else int(fd_dim)
    cap = min(d, max_pca_dim(min(len(x), len(y))))
    if cap < 1:  # KAD stands; FD would rest on fewer than ten samples per dimension
        nan_fd = {"value": math.nan, "ci": (math.nan, math.nan), "dim": 0}
        report.update(fd=nan_fd, fd_inf={**nan_fd, "slope": math.nan, "ns": None}, pca=None,
                      notes=[f"FD not computed: it needs at least 10 vectors per set, got {len(x)} and {len(y)}"])
        return report
    use = min(requested, cap)
    if use < requested:
        notes.append(f"FD dimension capped from {requested} to {use} = min(d, min(n_x, n_y) // 10)")
    if use < d:
        pca = pca_fit(y, use)  # use <= min(n_x, n_y) // 10 <= n_y // 10
        px, py = pca.apply(x), pca.apply(y)
        report["pca"] = {"dim": use, "requested": requested, "cap": cap, "capped": use < requested,
                         "explained_variance": float(pca.explained_variance_ratio.sum())}
    else:
        px, py = x, y
        report["pca"] = None

    def guarded(name, f):
        try:
            return f()
        except (FrechetError, DistributionError) as e:
            notes.append(f"{name}: {e}")
            return None

    fd = guarded("fd", lambda: frechet_distance(px, py))
    fd_ci = None if fd is None else guarded(
        "fd ci", lambda: half_sample_ci(frechet_distance, px, py, n_boot, alpha, rng, estimate=fd))
    report["fd"] = {"value": math.nan if fd is None else fd, "ci": fd_ci or (math.nan, math.nan), "dim": use}
    inf = guarded("fd_inf", lambda: fd_infinity(px, py, fd_sizes, rng))
    ns = inf.ns if inf is not None else None
    half_ns = None if fd_sizes is None or ns is None else tuple(max(2, int(n) // 2) for n in ns)
    inf_ci = None if inf is None else guarded("fd_inf ci", lambda: half_sample_ci(
        lambda a, b: fd_infinity(a, b, half_ns, rng).value, px, py, n_boot, alpha, rng, estimate=inf.value))
    report["fd_inf"] = {"value": math.nan if inf is None else inf.value,
                        "slope": math.nan if inf is None else inf.slope,
                        "ci": inf_ci or (math.nan, math.nan), "ns": ns, "dim": use}
    report["notes"] = notes
    return report

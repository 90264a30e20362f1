"""Distribution distances against slow references and known answers: KAD equals a double loop and reads ~0 for
one distribution, FD matches the Gaussian closed form, FD-infinity removes the c/N bias, sqrtm's imaginary part is
checked, the PCA dimension is capped, and every report carries its N and dimension."""
import math
from itertools import combinations

import numpy as np
import pytest

from lmdm.errors import UsageError
from lmdm.eval.distribution import (
    DistributionError,
    FrechetError,
    bootstrap_ci,
    compare_sets,
    fd_infinity,
    frechet_distance,
    frechet_from_stats,
    half_sample_ci,
    kad,
    kad_bootstrap_ci,
    median_bandwidth,
    pca_fit,
)


def slow_kad(x, y, sigma=None):
    """Gretton et al. 2012 eq. 3 as written: double loops, diagonal left out; sigma = median distance within y."""
    if sigma is None:
        sigma = float(np.median([math.dist(a, b) for a, b in combinations(y, 2)]))
    k = lambda a, b: math.exp(-sum((ai - bi) ** 2 for ai, bi in zip(a, b)) / (2 * sigma * sigma))
    m, n = len(x), len(y)
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    xy = sum(k(a, b) for a in x for b in y) / (m * n)
    return xx + yy - 2 * xy


def test_kad_equals_a_slow_double_loop():
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((7, 3)), rng.standard_normal((9, 3)) + 0.5
    assert kad(x, y) == pytest.approx(slow_kad(x, y), rel=1e-10, abs=1e-14)
    assert kad(x, y, bandwidth=0.7) == pytest.approx(slow_kad(x, y, 0.7), rel=1e-10, abs=1e-14)
    assert median_bandwidth(y) == pytest.approx(np.median([math.dist(a, b) for a, b in combinations(y, 2)]))


def test_kad_is_zero_within_one_distribution_and_far_above_across_two():
    rng = np.random.default_rng(1)
    x, y = rng.standard_normal((300, 8)), rng.standard_normal((300, 8))
    same = kad(x, y)
    lo, hi = kad_bootstrap_ci(x, y, n_boot=100, rng=1)
    assert lo < 0 < hi and lo <= same <= hi
    # resampling without leaving out the pairs of copies biases the within-set means up: the interval leaves 0
    naive_lo, naive_hi = bootstrap_ci(lambda a, b: kad(a, b, median_bandwidth(y)), x, y, n_boot=100, rng=1)
    assert naive_lo > 0 and (naive_lo + naive_hi) / 2 > (lo + hi) / 2
    other = rng.uniform(-1.0, 3.0, (300, 8))  # a different distribution: shifted, bounded, wider
    assert kad(other, y) > 20 * hi


def test_fd_matches_the_gaussian_closed_form():
    # diagonal (commuting) covariances: FD = |mu1 - mu2|^2 + sum (sqrt(a) - sqrt(b))^2
    mu1, mu2 = np.array([0.0, 1.0, -1.0]), np.array([0.5, 1.0, 1.0])
    a, b = np.array([1.0, 4.0, 0.25]), np.array([2.0, 1.0, 0.25])
    closed = float(np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2))
    assert frechet_from_stats(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(closed, rel=1e-9)
    # a rotated pair gives the same distance (FD is invariant under a common rotation)
    q, _ = np.linalg.qr(np.random.default_rng(2).standard_normal((3, 3)))
    rotated = frechet_from_stats(q @ mu1, q @ np.diag(a) @ q.T, q @ mu2, q @ np.diag(b) @ q.T)
    assert rotated == pytest.approx(closed, rel=1e-8)
    # from samples (large n), within the estimate's spread
    rng = np.random.default_rng(3)
    x = mu1 + rng.standard_normal((40000, 3)) * np.sqrt(a)
    y = mu2 + rng.standard_normal((40000, 3)) * np.sqrt(b)
    assert frechet_distance(x, y) == pytest.approx(closed, abs=0.05)


def test_fd_infinity_removes_the_small_sample_bias():
    rng = np.random.default_rng(4)
    x, y = rng.standard_normal((2000, 8)), rng.standard_normal((4000, 8))
    small = frechet_distance(x[:100], y)
    result = fd_infinity(x, y, rng=0)
    assert small > 0.15  # measured 0.17: E[FD at N] ~ c / N with c ~ 30 here
    assert abs(result.value) < 0.03  # measured 0.010
    assert result.slope > 10 and result.ns == (400, 800, 1200, 1600, 2000) and len(result.fds) == 5
    assert result.fds[0] > result.fds[-1]
    # subsampling the reference too extrapolates its bias away as well
    assert abs(fd_infinity(x, y, rng=0, resample_reference=True).value) < 0.03


def test_fd_intervals_half_sampling_contains_the_estimate_where_the_percentile_bootstrap_does_not():
    rng = np.random.default_rng(5)
    x, y = rng.standard_normal((300, 8)), rng.standard_normal((300, 8))
    fd = frechet_distance(x, y)
    lo, hi = half_sample_ci(frechet_distance, x, y, n_boot=60, rng=2, estimate=fd)
    assert lo < fd < hi
    boot_lo, _ = bootstrap_ci(frechet_distance, x, y, n_boot=60, rng=2)
    assert boot_lo > fd  # repeated rows inflate the c/N bias (the pitfall bootstrap_ci's docstring measures)


def test_sqrtm_imaginary_part_is_checked_not_dropped():
    # an indefinite "covariance" makes sigma1 sigma2 have a negative eigenvalue: sqrtm is truly complex
    with pytest.raises(FrechetError, match="imaginary part"):
        frechet_from_stats(np.zeros(2), np.diag([1.0, -1.0]), np.zeros(2), np.eye(2))
    # near-singular sample covariances (n < d) give a complex sqrtm whose imaginary part is round-off (~1e-7):
    # accepted at the default tolerance, refused at zero tolerance
    rng = np.random.default_rng(6)
    x, y = rng.standard_normal((12, 30)), rng.standard_normal((12, 30))
    assert np.isfinite(frechet_distance(x, y))
    with pytest.raises(FrechetError):
        frechet_distance(x, y, imag_tolerance=0.0)


def test_pca_is_fitted_on_the_reference_and_its_dimension_is_capped():
    rng = np.random.default_rng(7)
    scales = np.array([10.0, 3.0, 1.0, 0.1])
    y = rng.standard_normal((200, 4)) * scales
    pca = pca_fit(y, 2)
    assert pca.dim == 2 and pca.n_reference == 200
    assert abs(pca.components[0, 0]) > 0.99 and abs(pca.components[1, 1]) > 0.99
    np.testing.assert_allclose(pca.components @ pca.components.T, np.eye(2), atol=1e-12)
    expected = scales[:2] ** 2 / np.sum(scales ** 2)
    np.testing.assert_allclose(pca.explained_variance_ratio, expected, rtol=0.1)
    assert pca.apply(rng.standard_normal((5, 4))).shape == (5, 2)
    with pytest.raises(DistributionError, match="n // 10"):
        pca_fit(y[:30], 4)  # 30 vectors allow 3 dimensions
    assert pca_fit(y[:30], 3).dim == 3
    with pytest.raises(DistributionError):
        pca.apply(np.zeros((3, 5)))


def test_compare_sets_reports_n_dimension_and_intervals_and_says_when_it_caps():
    rng = np.random.default_rng(8)
    x, y = rng.standard_normal((200, 32)), rng.standard_normal((240, 32))
    report = compare_sets(x, y, n_boot=20, rng=0)
    assert (report["n_x"], report["n_y"], report["dim"]) == (200, 240, 32)
    assert report["kad"]["dim"] == 32 and report["fd"]["dim"] == report["fd_inf"]["dim"] == 20
    assert report["pca"]["capped"] and report["pca"]["dim"] == 20 and report["pca"]["requested"] == 32
    assert any("capped from 32 to 20" in note for note in report["notes"])
    for key in ("kad", "fd", "fd_inf"):
        lo, hi = report[key]["ci"]
        assert lo <= report[key]["value"] <= hi
    assert report["kad"]["ci"][0] < 0 < report["kad"]["ci"][1]
    # a dimension under the cap is used as asked, and full width when it fits
    assert compare_sets(x, y, fd_dim=5, n_boot=5, rng=0)["fd"]["dim"] == 5
    small = compare_sets(x[:, :4], y[:, :4], n_boot=5, rng=0)
    assert small["pca"] is None and small["fd"]["dim"] == 4 and small["notes"] == []


@pytest.mark.parametrize("x,y", [
    (np.zeros((5, 3)), np.zeros((5, 4))),  # widths differ
    (np.zeros(5), np.zeros((5, 1))),  # not 2-D
    (np.zeros((1, 3)), np.ones((5, 3))),  # too few rows
    (np.full((5, 3), np.nan), np.ones((5, 3))),  # not finite
])
def test_bad_sets_raise_a_usage_error(x, y):
    with pytest.raises(DistributionError) as e:
        kad(x, y, bandwidth=1.0)
    assert isinstance(e.value, UsageError)
    with pytest.raises(DistributionError):
        frechet_distance(x, y)


def test_tiny_sets_get_kad_but_no_fd():
    """Below ten vectors per set FD would rest on less than ten samples per dimension: NaN with a note, while
    KAD (which needs no covariance) is still reported."""
    rng = np.random.default_rng(9)
    tiny = compare_sets(rng.standard_normal((9, 3)), rng.standard_normal((50, 3)), n_boot=5, rng=0)
    assert np.isnan(tiny["fd"]["value"]) and np.isnan(tiny["fd_inf"]["value"]) and "at least 10" in tiny["notes"][0]
    assert np.isfinite(tiny["kad"]["value"]) and tiny["n_x"] == 9
    report = compare_sets(rng.standard_normal((15, 3)), rng.standard_normal((50, 3)), n_boot=5, rng=0)
    assert report["fd"]["dim"] == 1 and report["n_x"] == 15

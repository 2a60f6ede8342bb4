"""FD-digits against a scipy.linalg.sqrtm reference and a closed form; energy distance against scipy / brute force."""
import math

import numpy as np
import pytest
import scipy.linalg
import scipy.stats

from kexue_jax.diffusion import metrics as M


def _sqrtm_reference(mu1, c1, mu2, c2):
    covmean = scipy.linalg.sqrtm(c1 @ c2)
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(c1) + np.trace(c2) - 2 * np.trace(np.real(covmean)))


def test_frechet_distance_matches_sqrtm_and_closed_form():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(6, 6)), rng.normal(size=(6, 9))
    c1, c2 = a @ a.T + 0.1 * np.eye(6), b @ b.T / 9
    mu1, mu2 = rng.normal(size=6), rng.normal(size=6)
    assert M.frechet_distance(mu1, c1, mu2, c2) == pytest.approx(_sqrtm_reference(mu1, c1, mu2, c2), rel=1e-8)
    assert M.frechet_distance(mu1, c1, mu1, c1) == pytest.approx(0.0, abs=1e-8)
    # N(μ₁, a²I) vs N(μ₂, b²I): ‖Δμ‖² + k(a − b)².
    assert M.frechet_distance(mu1, 4 * np.eye(6), mu2, 0.25 * np.eye(6)) == pytest.approx(
        np.sum((mu1 - mu2) ** 2) + 6 * 1.5 ** 2, rel=1e-12)
    f = rng.normal(size=(50, 3))
    mean, cov = M.gaussian_statistics(f)
    np.testing.assert_allclose(cov, np.cov(f.T), rtol=1e-12)


def test_energy_distance():
    rng = np.random.default_rng(1)
    u, v = rng.normal(size=40), rng.normal(0.5, 2.0, size=30)
    # scipy's 1-D energy distance is the square root of the V-statistic form.
    assert math.sqrt(M.energy_distance(u[:, None], v[:, None], unbiased=False)) == pytest.approx(
        scipy.stats.energy_distance(u, v), rel=1e-10)
    x, y = rng.normal(size=(7, 3)), rng.normal(size=(5, 3)) + 1.0
    dist = lambda p, q: np.linalg.norm(p - q)
    xy = np.mean([dist(p, q) for p in x for q in y])
    xx = np.mean([dist(x[i], x[j]) for i in range(7) for j in range(7) if i != j])
    yy = np.mean([dist(y[i], y[j]) for i in range(5) for j in range(5) if i != j])
    assert M.energy_distance(x, y) == pytest.approx(2 * xy - xx - yy, rel=1e-12)


def test_class_histogram_metrics():
    out = M.class_histogram_metrics(np.repeat(np.arange(10), 3), 10)
    assert out == {"class_coverage": 10.0, "class_entropy": pytest.approx(math.log(10), rel=1e-12)}
    assert M.class_histogram_metrics(np.array([3, 3, 3]), 10) == {"class_coverage": 1.0, "class_entropy": 0.0}


BAD = [
    (lambda: M.frechet_distance(np.zeros(3), np.eye(3), np.zeros(2), np.eye(3)), "`mu2` must have shape (3,)"),
    (lambda: M.frechet_distance(np.zeros(3), np.eye(2), np.zeros(3), np.eye(3)), "`cov1` must have shape (3, 3)"),
    (lambda: M.energy_distance(np.zeros((4, 2)), np.zeros((4, 3))), "`x` and `y` must be 2-D arrays [n >= 2, d]"),
    (lambda: M.gaussian_statistics(np.zeros(5)), "`features` must be a 2-D array [n >= 2, k]; got shape (5,)"),
    (lambda: M.class_histogram_metrics(np.array([], int), 10), "`predicted` must be a non-empty 1-D array"),
    (lambda: M.class_histogram_metrics(np.array([1]), 0), "`num_classes` must be a positive int; got 0"),
]


@pytest.mark.parametrize("fn,message", BAD, ids=[m[:30] for _, m in BAD])
def test_bad_inputs(fn, message):
    with pytest.raises(ValueError) as e:
        fn()
    assert message in str(e.value)

"""FD-digits against a scipy.linalg.sqrtm reference and a closed form; energy distance against scipy / brute force."""
import math

import jax
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



def test_energy_distance_beyond_one_block_of_rows_equals_brute_force():
    # n > 1024 takes the blocked path (rows i..i+1023 against all), whose diagonal must be the block's own.
    import scipy.spatial.distance as D

    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(2100, 2)), rng.normal(size=(1300, 2)) * 1.2 + 0.1
    dxx, dyy = D.cdist(x, x), D.cdist(y, y)
    want = (2 * D.cdist(x, y).mean() - dxx.sum() / (2100 * 2099) - dyy.sum() / (1300 * 1299))
    assert M.energy_distance(x, y) == pytest.approx(want, rel=1e-10)

def test_class_histogram_metrics():
    out = M.class_histogram_metrics(np.repeat(np.arange(10), 3), 10)
    assert out == {"class_coverage": 10.0, "class_entropy": pytest.approx(math.log(10), rel=1e-12)}
    assert M.class_histogram_metrics(np.array([3, 3, 3]), 10) == {"class_coverage": 1.0, "class_entropy": 0.0}



def test_paired_bootstrap_fd_identity_resample_and_1d_closed_form():
    rng = np.random.default_rng(2)
    f = rng.normal(0.3, 1.5, size=(40, 3))
    ref = (rng.normal(size=3), np.diag([1.0, 2.0, 0.5]))
    ident = np.tile(np.arange(40), (3, 1))
    reps = M.paired_bootstrap_fd({"a": f}, ref, indices=ident)["a"]
    np.testing.assert_allclose(reps, M.frechet_distance(*M.gaussian_statistics(f), *ref), rtol=1e-10)
    # k = 1: FD = (m − μ_r)² + (s − s_r)², with m, s² the mean and unbiased variance of the resampled rows.
    x = rng.normal(-0.2, 0.7, size=(25, 1))
    idx = rng.integers(0, 25, size=(30, 25))
    reps = M.paired_bootstrap_fd({"x": x}, (np.array([0.4]), np.array([[2.25]])), indices=idx)["x"]
    closed = [(x[i, 0].mean() - 0.4) ** 2 + (x[i, 0].std(ddof=1) - 1.5) ** 2 for i in idx]
    np.testing.assert_allclose(reps, closed, rtol=1e-10)


def test_paired_bootstrap_fd_applies_one_resample_to_every_set():
    rng = np.random.default_rng(3)
    a = rng.normal(size=(60, 4))
    c = np.array([0.5, -0.2, 0.0, 0.1])
    ref = (np.full(4, 0.2), np.eye(4))
    reps = M.paired_bootstrap_fd({"a": a, "same": a.copy(), "shifted": a + c}, ref, num_resamples=50, seed=1)
    assert np.array_equal(reps["a"], reps["same"])  # unpaired resampling would differ here
    assert np.std(reps["a"]) > 0.01
    # A shift of every feature by c changes only the mean term: ΔFD = 2c·(m − μ_r) + ‖c‖², m = replicate mean.
    idx = np.random.default_rng(1).integers(0, 60, size=(50, 60))  # the stream `seed=1` draws
    expected = [2 * c @ (a[i].mean(0) - ref[0]) + c @ c for i in idx]
    np.testing.assert_allclose(reps["shifted"] - reps["a"], expected, rtol=1e-9, atol=1e-12)


def test_paired_bootstrap_fd_standard_error_matches_repeated_draws():
    # The bootstrap's std of FD from ONE sample set estimates the std of FD over independent sample sets.
    rng = np.random.default_rng(4)
    n, k = 200, 3
    ref = (np.full(k, 0.4), np.eye(k))
    draw = lambda: rng.normal(size=(n, k)) * np.array([1.0, 1.3, 0.8])
    true_std = np.std([M.frechet_distance(*M.gaussian_statistics(draw()), *ref) for _ in range(1000)])
    boot = np.mean([np.std(M.paired_bootstrap_fd({"f": draw()}, ref, num_resamples=200, seed=s)["f"])
                    for s in range(20)])
    assert boot == pytest.approx(true_std, rel=0.1), (boot, true_std)  # measured 1.01x; the mean of 20 has sd 0.03x


BAD = [
    (lambda: M.frechet_distance(np.zeros(3), np.eye(3), np.zeros(2), np.eye(3)), "`mu2` must have shape (3,)"),
    (lambda: M.frechet_distance(np.zeros(3), np.eye(2), np.zeros(3), np.eye(3)), "`cov1` must have shape (3, 3)"),
    (lambda: M.energy_distance(np.zeros((4, 2)), np.zeros((4, 3))), "`x` and `y` must be 2-D arrays [n >= 2, d]"),
    (lambda: M.gaussian_statistics(np.zeros(5)), "`features` must be a 2-D array [n >= 2, k]; got shape (5,)"),
    (lambda: M.class_histogram_metrics(np.array([], int), 10), "`predicted` must be a non-empty 1-D array"),
    (lambda: M.class_histogram_metrics(np.array([1]), 0), "`num_classes` must be a positive int; got 0"),
    (lambda: M.paired_bootstrap_fd({}, (np.zeros(2), np.eye(2))), "`features` must be a non-empty dict"),
    (lambda: M.paired_bootstrap_fd({"a": np.zeros((5, 2)), "b": np.zeros((4, 2))}, (np.zeros(2), np.eye(2))),
     "`features` must all have the same shape [n >= 2, k] (paired rows); 'b' has (4, 2)"),
    (lambda: M.paired_bootstrap_fd({"a": np.zeros((5, 2))}, (np.zeros(3), np.eye(3))),
     "`reference` must be (mean [2], covariance [2, 2]); got shapes (3,), (3, 3)"),
    (lambda: M.paired_bootstrap_fd({"a": np.zeros((5, 2))}, (np.zeros(2), np.eye(2)), num_resamples=1),
     "`num_resamples` must be an int >= 2; got 1"),
    (lambda: M.paired_bootstrap_fd({"a": np.zeros((5, 2))}, (np.zeros(2), np.eye(2)), indices=np.full((3, 5), 5)),
     "`indices` must be an integer array [B, 5] with entries in [0, 5)"),
]


@pytest.mark.parametrize("fn,message", BAD, ids=[m[:30] for _, m in BAD])
def test_bad_inputs(fn, message):
    with pytest.raises(ValueError) as e:
        fn()
    assert message in str(e.value)


def _leaves(tree):
    return [np.asarray(x) for x in jax.tree.leaves(tree)]


def test_classifier_trains_on_the_dataset_it_is_given_even_from_a_tfds_data_dir(tmp_path, monkeypatch):
    # The FD classifier must be fitted on the Dataset passed in, not on a reload by name: a tfds dataset
    # loaded with an explicit data_dir (config.data_dir, no environment variable) cannot be reloaded by name,
    # and a reload would also ignore a sliced split. Same data and seed give the same weights either way.
    from flax import nnx

    from kexue_jax import data
    from kexue_jax.data import __main__ as cli

    assert cli.main(["prepare", "digits", "--data_dir", str(tmp_path / "tfds")]) == 0
    monkeypatch.setenv(data.DATA_DIR_ENV, str(tmp_path / "empty"))  # nothing reachable by name alone
    monkeypatch.setattr(M, "_CLASSIFIERS", {})
    from_tfds = M.train_classifier(data.load("tfds:kexue_digits", "train", data_dir=tmp_path / "tfds"), steps=3)
    M._CLASSIFIERS.clear()  # fit again from the embedded copy: the comparison must not be a cache hit
    embedded = M.train_classifier(data.load("digits", "train"), steps=3)
    assert embedded is not from_tfds
    for a, b in zip(_leaves(nnx.state(from_tfds)), _leaves(nnx.state(embedded))):
        np.testing.assert_array_equal(a, b)
    # a slice is a different training set: a different classifier, not the cached full-split one
    sliced = M.train_classifier(data.load("tfds:kexue_digits", "train[:200]", data_dir=tmp_path / "tfds"), steps=3)
    assert any(not np.array_equal(a, b) for a, b in zip(_leaves(nnx.state(sliced)),
                                                        _leaves(nnx.state(embedded))))


def test_data_fd_references_at_the_samples_size_equal_brute_force():
    # FD is biased upward at small n, so the NFE table reads its cells (n samples) against real images at the
    # same n: random n-image subsets of the test split (and of the training split). Checked against a
    # brute-force loop over the same subsets, the whole-split value of image_metrics, and n = len(test).
    from kexue_jax import data

    train, test = data.load("digits", "train"), data.load("digits", "test")
    clf = M.train_classifier(train, steps=3)
    f_tr, _ = M.classifier_features(clf, train.arrays["image"])
    f_te, _ = M.classifier_features(clf, test.arrays["image"])
    ref = M.gaussian_statistics(f_tr)
    out = M.data_fd_references(clf, train, test, 120, num_subsets=4, seed=7)
    rng = np.random.default_rng(7)
    for split, f in (("test", f_te), ("train", f_tr)):
        vals = [M.frechet_distance(*M.gaussian_statistics(f[rng.choice(len(f), 120, replace=False)]), *ref)
                for _ in range(4)]
        assert out[f"test/fd_{split}_subsets_mean"] == pytest.approx(np.mean(vals), rel=1e-12)
        assert out[f"test/fd_{split}_subsets_std"] == pytest.approx(np.std(vals), rel=1e-12)
    whole = M.image_metrics(clf, test.arrays["image"][:5], train, test)["test/fd_data"]
    assert out["test/fd_data"] == pytest.approx(whole, rel=1e-12) and out["test/fd_data_num_images"] == 297
    assert out["test/fd_test_subsets_mean"] > out["test/fd_data"]  # fewer images: larger FD (the bias)
    full = M.data_fd_references(clf, train, test, 297, num_subsets=3)
    # a permutation of the split: equal up to the summation order (FD ≈ 0.05 here, a difference of traces)
    assert full["test/fd_test_subsets_mean"] == pytest.approx(whole, abs=1e-8)
    assert full["test/fd_test_subsets_std"] == pytest.approx(0.0, abs=1e-9)
    assert math.isnan(M.data_fd_references(clf, train, test, 298, num_subsets=1)["test/fd_test_subsets_mean"])
    with pytest.raises(ValueError, match="`n` must be an int >= 2; got 1"):
        M.data_fd_references(clf, train, test, 1)



def test_image_metrics_scores_the_samples_not_the_test_split():
    # test/fd and the class histogram come from the samples' features and predictions; test/fd_data,
    # test/class_entropy_data and the accuracy from the test split's (brute force from classifier_features).
    from kexue_jax import data

    train, test = data.load("digits", "train"), data.load("digits", "test")
    clf = M.train_classifier(train, steps=3)
    samples = np.repeat(train.arrays["image"][:1], 30, axis=0)  # one image: one predicted class
    samples = np.concatenate([samples, train.arrays["image"][100:130]])
    out = M.image_metrics(clf, samples, train, test)
    f_tr, _ = M.classifier_features(clf, train.arrays["image"])
    f_te, p_te = M.classifier_features(clf, test.arrays["image"])
    f_s, p_s = M.classifier_features(clf, samples)
    ref = M.gaussian_statistics(f_tr)
    assert out["test/fd"] == pytest.approx(M.frechet_distance(*M.gaussian_statistics(f_s), *ref), rel=1e-12)
    assert out["test/fd_data"] == pytest.approx(M.frechet_distance(*M.gaussian_statistics(f_te), *ref), rel=1e-12)
    counts = np.bincount(p_s, minlength=10) / len(p_s)
    nz = counts[counts > 0]
    assert out["test/class_coverage"] == len(nz)
    assert out["test/class_entropy"] == pytest.approx(-np.sum(nz * np.log(nz)), rel=1e-12)
    counts_te = np.bincount(p_te, minlength=10) / len(p_te)
    nz_te = counts_te[counts_te > 0]
    assert out["test/class_entropy_data"] == pytest.approx(-np.sum(nz_te * np.log(nz_te)), rel=1e-12)
    assert out["test/classifier_accuracy"] == pytest.approx(np.mean(p_te == test.arrays["label"]), rel=1e-12)
    # the sample histogram differs from the test split's, so swapping them cannot pass
    assert abs(out["test/class_entropy"] - out["test/class_entropy_data"]) > 0.05

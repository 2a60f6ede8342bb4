"""Sample-quality metrics without Inception weights: FD-digits, class coverage, energy distance.

FD-digits is the Fréchet distance ‖μ₁ − μ₂‖² + tr(C₁ + C₂ − 2(C₁^{½} C₂ C₁^{½})^{½}) between Gaussians fitted to
the penultimate activations of the in-repo `ImageClassifier` (kexue_jax/nn/mlp.py) trained on the SAME
dataset. It is NOT comparable to Inception FID (different features, dimension and sample sizes): use it to
rank models and samplers on one dataset, next to the same statistic for held-out data (`fd_data`).
Class coverage counts the classes the classifier predicts among the samples; the entropy of the
predicted-class histogram measures mode balance (max ln 10 = 2.303 nats). For 2-D data, the energy
distance 2E‖X − Y‖ − E‖X − X'‖ − E‖Y − Y'‖ (Székely & Rizzo) compares samples with held-out points.

References:
  https://kexue.fm/archives/9152 ; Heusel et al., "GANs Trained by a Two Time-Scale Update Rule" (FID),
  arXiv:1706.08500; Székely & Rizzo, "Energy statistics" (2013); spec generative.md §0.1 (FD-digits).
"""
from __future__ import annotations

import functools
import hashlib
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

__all__ = ["frechet_distance", "gaussian_statistics", "paired_bootstrap_fd", "energy_distance",
           "class_histogram_metrics", "train_classifier", "classifier_features", "image_metrics"]


def gaussian_statistics(features) -> tuple[np.ndarray, np.ndarray]:
    """(mean [k], covariance [k, k]) of features [n, k] in float64 (unbiased covariance, n >= 2)."""
    f = np.asarray(features, np.float64)
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"`features` must be a 2-D array [n >= 2, k]; got shape {f.shape}")
    return f.mean(axis=0), np.cov(f, rowvar=False).reshape(f.shape[1], f.shape[1])


def _psd_sqrt(c: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh(0.5 * (c + c.T))
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def frechet_distance(mu1, cov1, mu2, cov2) -> float:
    """‖μ₁ − μ₂‖² + tr C₁ + tr C₂ − 2 tr (C₁^{½} C₂ C₁^{½})^{½} (float64).

    tr (C₁C₂)^{½} equals tr (C₁^{½}C₂C₁^{½})^{½}, whose argument is symmetric PSD, so symmetric eigendecompositions
    replace scipy.linalg.sqrtm (no complex round-off). Inputs must be PSD covariances.
    """
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    cov1, cov2 = np.asarray(cov1, np.float64), np.asarray(cov2, np.float64)
    k = mu1.shape[0] if mu1.ndim == 1 else -1
    for name, a, shape in (("mu1", mu1, (k,)), ("mu2", mu2, (k,)), ("cov1", cov1, (k, k)), ("cov2", cov2, (k, k))):
        if k < 1 or a.shape != shape:
            raise ValueError(f"`{name}` must have shape {shape} (k from `mu1`); got {a.shape}")
    s1 = _psd_sqrt(cov1)
    middle = s1 @ cov2 @ s1
    tr_sqrt = float(np.sum(np.sqrt(np.clip(np.linalg.eigvalsh(0.5 * (middle + middle.T)), 0.0, None))))
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(cov1) + np.trace(cov2) - 2.0 * tr_sqrt)


def paired_bootstrap_fd(features, reference, *, num_resamples: int = 200, seed: int = 0,
                        indices=None) -> dict[str, np.ndarray]:
    """Paired bootstrap of the FD of several sample sets to one reference Gaussian.

    `features` maps a name to features [n, k] of n samples; row i of every set must come from the same source
    (e.g. the same x_T for every sampler), so each replicate draws ONE resample of the rows and applies it to
    every set. The sampling noise that sets share then cancels in differences: the fraction of replicates with
    FD_a < FD_b is the bootstrap probability that a ranks below b at this sample size, and the replicates'
    standard deviation is the standard error of one FD. Only the sample sets are resampled; `reference`
    (mean [k], covariance [k, k]) is held fixed (it is the same for every set). The noise of anything trained
    (classifier, AMED predictor) is not included.

    Args:
      features: {name: [n, k]}, the same n and k for every name.
      reference: (mean [k], covariance [k, k]), e.g. `gaussian_statistics` of the training features.
      num_resamples: B, the number of bootstrap replicates (>= 2).
      seed: seed of the resampling (numpy).
      indices: explicit resamples [B, n] of row indices in [0, n) instead of random ones (then `num_resamples`
        and `seed` are ignored); row b of it is replicate b.
    Returns:
      {name: FD of each replicate [B]} in float64.
    """
    if not isinstance(features, dict) or not features:
        raise ValueError(f"`features` must be a non-empty dict of name -> [n, k] arrays; got {type(features).__name__}")
    arrays = {name: np.asarray(f, np.float64) for name, f in features.items()}
    shape = next(iter(arrays.values())).shape
    for name, f in arrays.items():
        if f.ndim != 2 or f.shape[0] < 2 or f.shape != shape:
            raise ValueError(f"`features` must all have the same shape [n >= 2, k] (paired rows); "
                             f"{name!r} has {f.shape}, the first has {shape}")
    n, k = shape
    ref_mu, ref_cov = (np.asarray(a, np.float64) for a in reference)
    if ref_mu.shape != (k,) or ref_cov.shape != (k, k):
        raise ValueError(f"`reference` must be (mean [{k}], covariance [{k}, {k}]); got shapes {ref_mu.shape}, "
                         f"{ref_cov.shape}")
    if indices is None:
        if isinstance(num_resamples, bool) or not isinstance(num_resamples, (int, np.integer)) or num_resamples < 2:
            raise ValueError(f"`num_resamples` must be an int >= 2; got {num_resamples!r}")
        indices = np.random.default_rng(seed).integers(0, n, size=(int(num_resamples), n))
    indices = np.asarray(indices)
    if (indices.ndim != 2 or indices.shape[1] != n or not np.issubdtype(indices.dtype, np.integer)
            or indices.size == 0 or indices.min() < 0 or indices.max() >= n):
        raise ValueError(f"`indices` must be an integer array [B, {n}] with entries in [0, {n}); got shape "
                         f"{indices.shape}, dtype {indices.dtype}")
    # FD is symmetric: with the fixed reference as C₁, its square root is computed once.
    ref_sqrt = _psd_sqrt(ref_cov)
    ref_trace = float(np.trace(ref_cov))
    out = {}
    for name, f in arrays.items():
        fds = np.empty(len(indices))
        for b, idx in enumerate(indices):
            mu, cov = gaussian_statistics(f[idx])
            middle = ref_sqrt @ cov @ ref_sqrt
            tr_sqrt = float(np.sum(np.sqrt(np.clip(np.linalg.eigvalsh(0.5 * (middle + middle.T)), 0.0, None))))
            fds[b] = float(np.sum((mu - ref_mu) ** 2) + ref_trace + np.trace(cov) - 2.0 * tr_sqrt)
        out[name] = fds
    return out


def _mean_pairwise(a: np.ndarray, b: np.ndarray, exclude_diagonal: bool) -> float:
    total, count = 0.0, 0
    for i in range(0, len(a), 1024):  # [1024, m] blocks keep memory bounded
        d = np.sqrt(np.maximum(np.sum((a[i:i + 1024, None, :] - b[None, :, :]) ** 2, -1), 0.0))
        if exclude_diagonal:
            rows = np.arange(d.shape[0])
            d[rows, i + rows] = 0.0
        total += float(d.sum())
    n, m = len(a), len(b)
    return total / (n * (n - 1) if exclude_diagonal else n * m)


def energy_distance(x, y, *, unbiased: bool = True) -> float:
    """Energy distance 2E‖X − Y‖ − E‖X − X'‖ − E‖Y − Y'‖ between samples x [n, d] and y [m, d] (float64).

    unbiased=True uses U-statistics for the within-sample terms (pairs i ≠ j; may be slightly negative when
    the distributions are equal); unbiased=False uses the empirical distributions (V-statistics), whose
    square root is scipy.stats.energy_distance in 1-D.
    """
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1] or len(x) < 2 or len(y) < 2:
        raise ValueError(f"`x` and `y` must be 2-D arrays [n >= 2, d] with the same d; got {x.shape} and {y.shape}")
    xy = _mean_pairwise(x, y, False)
    xx = _mean_pairwise(x, x, unbiased)
    yy = _mean_pairwise(y, y, unbiased)
    return 2.0 * xy - xx - yy


def class_histogram_metrics(predicted, num_classes: int) -> dict[str, float]:
    """{'class_coverage': classes predicted at least once, 'class_entropy': entropy (nats) of the histogram}."""
    p = np.asarray(predicted)
    if p.ndim != 1 or p.size == 0:
        raise ValueError(f"`predicted` must be a non-empty 1-D array of class ids; got shape {p.shape}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 1:
        raise ValueError(f"`num_classes` must be a positive int; got {num_classes!r}")
    counts = np.bincount(p, minlength=num_classes).astype(np.float64)
    freq = counts / counts.sum()
    nz = freq[freq > 0]
    return {"class_coverage": float(np.sum(counts > 0)), "class_entropy": float(-np.sum(nz * np.log(nz)))}


_CLASSIFIERS: dict = {}  # (data digest, shape, levels, classes, hidden, steps, seed, batch) -> classifier
_MAX_CLASSIFIERS = 4


def _fit_classifier(ds, image_shape: tuple, levels: int, num_classes: int, hidden: tuple, steps: int, seed: int,
                    batch_size: int):
    from kexue_jax.nn.mlp import ImageClassifier, classifier_loss

    model = ImageClassifier(image_shape=image_shape, hidden=hidden, num_classes=num_classes, levels=levels,
                            rngs=nnx.Rngs(seed))
    tx = optax.adam(1e-3)
    graphdef, params = nnx.split(model)
    opt_state = tx.init(params)

    @jax.jit
    def step(params, opt_state, batch):
        def f(p):
            return classifier_loss(nnx.merge(graphdef, p), batch, key=None)[0]

        grads = jax.grad(f)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    rng = np.random.default_rng(seed)
    for _ in range(steps):
        idx = rng.choice(len(ds), batch_size, replace=False)
        params, opt_state = step(params, opt_state, ds.batch(idx))
    return nnx.merge(graphdef, params)


def train_classifier(train, *, steps: int = 2000, seed: int = 0, hidden=(256, 128), batch_size: int = 128):
    """An `ImageClassifier` trained with Adam(1e-3) on the image Dataset `train` (cached).

    The classifier is fitted on `train` itself (embedded or tfds, any data_dir, any split or slice); the last
    few are cached by a digest of the images and labels and the training setup.

    Args:
      train: the training Dataset ('image' uint8 [n, h, w, c] and 'label').
      steps, seed, hidden, batch_size: training setup; the penultimate layer (hidden[-1] units) gives the
        FD-digits features.
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"`steps` must be an int >= 0; got {steps!r}")
    image_shape = tuple(int(s) for s in train.arrays["image"].shape[1:])
    batch_size = min(batch_size, len(train))
    digest = hashlib.sha256()
    for k in ("image", "label"):  # the data itself: two datasets of one name (other data_dirs) never collide
        digest.update(np.ascontiguousarray(train.arrays[k]).tobytes())
    key = (digest.hexdigest(), image_shape, int(train.levels), int(train.num_classes), tuple(hidden), steps, seed,
           batch_size)
    if key not in _CLASSIFIERS:
        if len(_CLASSIFIERS) >= _MAX_CLASSIFIERS:
            _CLASSIFIERS.pop(next(iter(_CLASSIFIERS)))  # the oldest
        _CLASSIFIERS[key] = _fit_classifier(train, image_shape, int(train.levels), int(train.num_classes),
                                            tuple(hidden), steps, seed, batch_size)
    return _CLASSIFIERS[key]


@functools.partial(jax.jit, static_argnums=0)
def _features_and_classes(graphdef, state, images):
    # Module level, graphdef static: one compilation per classifier structure and batch shape, reused across
    # calls (a jit defined inside classifier_features was traced and compiled anew on every call).
    m = nnx.merge(graphdef, state)
    return m.features(images), jnp.argmax(m(images), -1)


def classifier_features(classifier, images, batch_size: int = 1000) -> tuple[np.ndarray, np.ndarray]:
    """(penultimate features [n, k] float64, predicted class [n]) of images in grey levels [n, h, w, c]."""
    graphdef, state = nnx.split(classifier)
    images = np.asarray(images)
    outs = [_features_and_classes(graphdef, state, jnp.asarray(images[i:i + batch_size]))
            for i in range(0, len(images), batch_size)]
    return (np.concatenate([np.asarray(o[0], np.float64) for o in outs]),
            np.concatenate([np.asarray(o[1]) for o in outs]))


def image_metrics(classifier, samples, train, test) -> dict[str, float]:
    """FD-digits of `samples` and of the test split against the training split, plus class coverage/entropy.

    Returns:
      {'test/fd', 'test/fd_data' (the whole test split vs train, at len(test) images, which need not be the
       number of samples: FD is biased upward at small n, see `data_fd_references`), 'test/class_coverage',
       'test/class_entropy', 'test/class_entropy_data', 'test/classifier_accuracy'}.
    """
    f_train, _ = classifier_features(classifier, train.arrays["image"])
    f_test, pred_test = classifier_features(classifier, test.arrays["image"])
    f_samp, pred_samp = classifier_features(classifier, samples)
    ref = gaussian_statistics(f_train)
    out = {"test/fd": frechet_distance(*gaussian_statistics(f_samp), *ref),
           "test/fd_data": frechet_distance(*gaussian_statistics(f_test), *ref),
           "test/classifier_accuracy": float(np.mean(pred_test == np.asarray(test.arrays["label"])))}
    hist = class_histogram_metrics(pred_samp, int(train.num_classes))
    out["test/class_coverage"] = hist["class_coverage"]
    out["test/class_entropy"] = hist["class_entropy"]
    out["test/class_entropy_data"] = class_histogram_metrics(pred_test, int(train.num_classes))["class_entropy"]
    return out


def data_fd_references(classifier, train, test, n: int, *, num_subsets: int = 20, seed: int = 0
                       ) -> dict[str, float]:
    """FD-digits of real images at `n` images (the number of samples), to read FD cells of that size against.

    FD estimated from n images is biased upward by roughly tr(Σ)/n-type terms, so the whole test split is a
    fair reference only when len(test) = n. Draws `num_subsets` random n-image subsets (without replacement,
    `numpy.random.default_rng(seed)`, test subsets first) of the test split and of the training split and
    scores each against the training split's statistics, as `image_metrics` scores samples.

    Returns:
      {'test/fd_data' and 'test/fd_data_num_images' (the whole test split, as `image_metrics`),
       'test/fd_test_subsets_mean', 'test/fd_test_subsets_std' (NaN when len(test) < n),
       'test/fd_train_subsets_mean', 'test/fd_train_subsets_std' (what a model that reproduced its
       training images would score at this n)}.
    """
    if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 2:
        raise ValueError(f"`n` must be an int >= 2; got {n!r}")
    if not isinstance(num_subsets, (int, np.integer)) or num_subsets < 1:
        raise ValueError(f"`num_subsets` must be a positive int; got {num_subsets!r}")
    f_train, _ = classifier_features(classifier, train.arrays["image"])
    f_test, _ = classifier_features(classifier, test.arrays["image"])
    ref = gaussian_statistics(f_train)
    rng = np.random.default_rng(seed)
    out = {"test/fd_data": frechet_distance(*gaussian_statistics(f_test), *ref),
           "test/fd_data_num_images": float(len(f_test))}
    for split, f in (("test", f_test), ("train", f_train)):
        if len(f) < n:
            out[f"test/fd_{split}_subsets_mean"] = out[f"test/fd_{split}_subsets_std"] = float("nan")
            continue
        vals = [frechet_distance(*gaussian_statistics(f[rng.choice(len(f), n, replace=False)]), *ref)
                for _ in range(num_subsets)]
        out[f"test/fd_{split}_subsets_mean"] = float(np.mean(vals))
        out[f"test/fd_{split}_subsets_std"] = float(np.std(vals))
    return out

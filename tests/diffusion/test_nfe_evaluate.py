"""`nfe_table.evaluate` end to end on an exact denoiser, with the classifier and data stubbed (seconds).

F ≡ 0 makes the EDM-preconditioned denoiser D = c_skip·x = σ_d²x/(σ_d² + σ²), the exact denoiser of N(0, σ_d² I)
data, so the probability-flow ODE dx/dσ = xσ/(σ_d² + σ²) can be integrated here in float64 without the library:
the RMSE cells are checked against that, and spies check what the AMED rows pass to distillation and sampling
(the teacher grid, M, AFS) and which reference statistics the paired bootstrap uses. The smoke experiment only
checks that the FD cells are finite.
"""
import functools
import types

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from kexue_jax import data as data_lib
from kexue_jax import samplers
from kexue_jax.diffusion import metrics, nfe_table, schedules

SHAPE, LEVELS, N, SD = (4, 4, 1), 17, 8, 0.5


class ZeroNet(nnx.Module):
    """F ≡ 0 (times a zero parameter, so the model has state); features: the mean pixel."""

    def __init__(self):
        self.w = nnx.Param(jnp.zeros(()))

    def __call__(self, x, c, return_features=False):
        out = self.w * x
        return (out, self.w * jnp.mean(x, axis=(1, 2, 3))[:, None]) if return_features else out


def _setup(monkeypatch, **overrides):
    def split(seed):
        images = np.random.default_rng(seed).integers(0, LEVELS, size=(12, *SHAPE)).astype(np.uint8)
        return types.SimpleNamespace(levels=LEVELS, example_shape={"image": SHAPE}, num_classes=10,
                                     arrays={"image": images, "label": np.zeros(12, int)})

    train, ds = split(0), split(1)  # evaluate() loads the training split itself and is given the test split
    monkeypatch.setattr(data_lib, "load", lambda name, which, **k: train if which == "train" else None)
    monkeypatch.setattr(metrics, "train_classifier", lambda *a, **k: "clf")
    monkeypatch.setattr(metrics, "image_metrics", lambda c, imgs, tr, te: {
        "test/fd": float(np.mean(imgs)), "test/class_coverage": 1.0, "test/class_entropy": 1.0})
    monkeypatch.setattr(metrics, "data_fd_references", lambda *a, **k: {})
    # features = the flattened image (grey levels), so reference statistics can be recomputed here
    monkeypatch.setattr(metrics, "classifier_features",
                        lambda clf, im, batch_size=1000: (np.asarray(im, np.float64).reshape(len(im), -1),
                                                          np.zeros(len(im), int)))
    cfg = ml_collections.ConfigDict(dict(loss_kwargs=dict(sigma_data=SD), sigma_min=0.002, sigma_max=80.0,
                                         eval_num_samples=N, dataset="x", seed=0, classifier_steps=1,
                                         sampler_names=("ddim", "amed"), nfe_list=(5,), amed_batch_size=2,
                                         amed_num_batches=1, fd_bootstrap=0))
    cfg.update(overrides)
    return train, ds, cfg


def _ode_reference(x_T):
    """float64: Euler on the 6-point ρ = 7 grid (DDIM at NFE 5) and EDM Heun-100 (Euler on the last step to 0)."""
    f = lambda y, s: y * s / (SD ** 2 + s * s)  # noqa: E731  dx/dσ = (x − D)/σ with D = σ_d²x/(σ_d² + σ²)
    grid = (80.0 ** (1 / 7) + np.linspace(0, 1, 6) * (0.002 ** (1 / 7) - 80.0 ** (1 / 7))) ** 7
    x = x_T.copy()
    for a, b in zip(grid[:-1], grid[1:]):
        x = x + (b - a) * f(x, a)
    ref_grid = np.asarray(schedules.edm_sigmas(101, 0.002, 80.0, 7.0, append_zero=True), np.float64)
    y = x_T.copy()
    for a, b in zip(ref_grid[:-1], ref_grid[1:]):
        d = f(y, a)
        y1 = y + (b - a) * d
        y = y1 if b == 0 else y + (b - a) * 0.5 * (d + f(y1, b))
    exact = x_T * np.sqrt(SD ** 2 / (SD ** 2 + 80.0 ** 2))  # the straight-line solution at σ = 0
    assert np.sqrt(np.mean((y - exact) ** 2)) < 2e-3 * np.sqrt(np.mean(exact ** 2))  # Heun-100 is accurate
    return x, y


def test_rmse_cells_and_what_the_amed_solver_row_distils_and_samples_with(monkeypatch):
    _, ds, cfg = _setup(monkeypatch)
    trained, sampled = [], []

    def train_spy(pred, den, sig, *a, **k):
        trained.append((np.asarray(sig), k))
        return pred, None

    real_amed = samplers.sample_amed

    @functools.wraps(real_amed)
    def amed_spy(*a, **k):
        sampled.append(k)
        return real_amed(*a, **k)

    monkeypatch.setattr(samplers, "train_amed_predictor", train_spy)
    monkeypatch.setattr(samplers, "sample_amed", amed_spy)
    key = jax.random.key(0)
    res = nfe_table.evaluate(ZeroNet(), ds, key=key, config=cfg, workdir=None)
    x_T = 80.0 * np.asarray(jax.random.normal(jax.random.fold_in(key, 0), (N, *SHAPE), jnp.float32), np.float64)
    ddim, heun100 = _ode_reference(x_T)
    # RMSE = √mean((x − Heun-100)²) over every pixel, against the same-x_T reference (rtol: float32 sampling)
    np.testing.assert_allclose(res["test/rmse_ref_ddim_nfe5"], np.sqrt(np.mean((ddim - heun100) ** 2)), rtol=1e-3)
    assert res["test/rmse_ref_ddim_nfe5"] > 0.1  # a 5-step Euler is far from the ODE solution: a real check
    # AMED-Solver at NFE 5: 4 time-uniform (ρ = 1) student points, M = 1, AFS, Heun teacher on the official grid
    (sig, k), = trained
    np.testing.assert_allclose(sig, schedules.time_uniform_sigmas(4, 0.002, 80.0, 1.0), rtol=1e-6)
    assert k["inserted"] == 1 and k["afs"] is True and k["teacher"] == "heun" and k["student"] == "amed"
    np.testing.assert_allclose(k["teacher_sigmas"], schedules.time_uniform_sigmas(7, 0.002, 80.0, 1.0), rtol=1e-6)
    s, = [kk for kk in sampled if "predictor" in kk]
    assert s["afs"] is True and s.get("afs_mean") is None


def test_paired_bootstrap_reads_the_training_statistics(monkeypatch):
    train_ds, ds, cfg = _setup(monkeypatch, fd_bootstrap=2, sampler_names=("ddim",))
    seen = []
    real = nfe_table.bootstrap_results

    def spy(feats, reference, **k):
        seen.append(reference)
        return real(feats, reference, **k)

    monkeypatch.setattr(nfe_table, "bootstrap_results", spy)
    nfe_table.evaluate(ZeroNet(), ds, key=jax.random.key(1), config=cfg, workdir=None)
    (mu, cov), = seen
    train = np.asarray(train_ds.arrays["image"], np.float64).reshape(12, -1)
    np.testing.assert_allclose(mu, train.mean(0), rtol=1e-12)
    np.testing.assert_allclose(cov, np.cov(train.T), rtol=1e-10, atol=1e-12)


def test_sampler_table_is_diff_samplers():
    # Grid type and ρ of each row (spec generative.md §12.2 and zju-pi/diff-sampler's launch settings): the
    # test of grid_for_nfe reads them from SAMPLERS, so a wrong entry there passes it.
    want = {"ddim": ("polynomial", 7.0), "heun": ("polynomial", 7.0), "dpm_solver_2": ("polynomial", 7.0),
            "dpm_solver_pp_3m": ("logsnr", None), "ipndm": ("polynomial", 7.0), "unipc": ("logsnr", None),
            "deis": ("time_uniform", 2.0), "amed": ("time_uniform", 1.0), "amed_afs_mean": ("time_uniform", 1.0)}
    for name, grid in want.items():
        assert nfe_table.SAMPLERS[name][2:] == grid, name
    for name, (_, opts, kind, rho) in nfe_table.SAMPLERS.items():
        if name.startswith("amed_plugin"):
            assert (kind, rho) == ("polynomial", 7.0), name
            assert opts.get("afs", False) == ("_afs" in name), name
    assert nfe_table.SAMPLERS["dpm_solver_pp_3m"][1] == {"order": 3}
    assert nfe_table.SAMPLERS["amed"][1] == {"afs": True}

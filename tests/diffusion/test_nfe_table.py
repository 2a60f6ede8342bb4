"""The NFE-table grid choice: NFE counts solver steps only (diff-sampler's convention)."""
import numpy as np
import pytest

from kexue_jax import samplers
from kexue_jax.diffusion import schedules
from kexue_jax.diffusion.nfe_table import SAMPLERS, grid_for_nfe


@pytest.mark.parametrize("name", ["ddim", "heun", "dpm_solver_pp_3m", "ipndm", "unipc", "deis"])
@pytest.mark.parametrize("target", [3, 5, 8])
def test_grid_has_the_target_nfe_and_ends_at_sigma_min(name, target):
    attr, opts, kind, rho = SAMPLERS[name]
    fn = getattr(samplers, attr)
    sig = grid_for_nfe(fn, target, kind, rho, 0.002, 80.0, **opts)
    sig = np.asarray(sig)
    if name == "heun" and target % 2:  # Heun: 2 evaluations per step to σ_min, 1 on a final step to 0
        assert sig[-1] == 0.0 and samplers.nfe(fn, sig) == target
        return
    assert samplers.nfe(fn, sig, **opts) == target
    assert sig[0] == pytest.approx(80.0) and sig[-1] == pytest.approx(0.002)  # no evaluation spent at σ = 0
    np.testing.assert_allclose(sig, np.asarray(schedules.sigma_grid(kind, len(sig), 0.002, 80.0, rho,
                                                                    append_zero=False)), rtol=1e-6)


def test_heun_even_nfe_ends_at_sigma_min():
    attr, opts, kind, rho = SAMPLERS["heun"]
    sig = np.asarray(grid_for_nfe(getattr(samplers, attr), 4, kind, rho, 0.002, 80.0, **opts))
    assert len(sig) == 3 and sig[-1] == pytest.approx(0.002) and samplers.nfe(samplers.sample_heun, sig) == 4


@pytest.mark.parametrize("name, afs", [("amed", True), ("amed_plugin", False), ("amed_plugin_afs", True),
                                       ("amed_plugin_r05", False), ("amed_plugin_afs_r05", True),
                                       ("amed_afs_mean", True), ("amed_plugin_afs_mean", True),
                                       ("amed_plugin_afs_mean_r05", True)])
def test_amed_grids_nfe_parity(name, afs):
    """AMED spends 2 evaluations per step, AFS saves the first: with AFS the grids have the paper's odd NFE
    (3, 5, ...: 2N − 1 for N steps), without it the even ones only (the plugin row of the NFE-4/6/8/10 cells)."""
    attr, opts, kind, rho = SAMPLERS[name]
    assert opts.get("afs", False) is afs
    fn = getattr(samplers, attr)
    extra = dict(opts, predictor=(np.zeros(1), np.ones(1), np.ones(1)))
    for target in (3, 4, 5, 6, 8, 10):
        sig = grid_for_nfe(fn, target, kind, rho, 0.002, 80.0, allow_zero=False, **extra)
        if (target % 2 == 1) == afs:
            assert sig is not None and samplers.nfe(fn, sig, **extra) == target
            assert len(sig) - 1 == (target + afs) // 2 and sig[-1] == pytest.approx(0.002)
        else:
            assert sig is None


# --- evaluate-only keys are checked with the rest of the config, before training --------------------------

def _nfe_config(arg=None, **overrides):
    from experiments.reproduce import load_config

    config = load_config("experiments/diffusion/nfe_table.py", arg)
    for k, v in overrides.items():
        config[k] = v
    return config


@pytest.mark.parametrize("arg", ["smoke", None, "mnist5k", "cifar10"])
def test_shipped_nfe_configs_pass_the_evaluate_check(arg):
    from kexue_jax.core.config import validate_train_config

    resolved = validate_train_config(_nfe_config(arg), num_devices=1)
    assert resolved["evaluate"].check_config is not None


@pytest.mark.parametrize("overrides, message", [
    (dict(sampler_names=("ddim", "amed_plugn")), r"`sampler_names` must be a non-empty tuple of distinct names"),
    (dict(sampler_names=("ddim", "ddim")), r"`sampler_names` must be .*distinct"),
    (dict(sampler_names=()), r"`sampler_names` must be a non-empty"),
    (dict(nfe_list=(5, 0)), r"`nfe_list` must be an integer >= 1; got 0"),
    (dict(nfe_list=(5, 5.5)), r"`nfe_list` must be an integer >= 1; got 5.5"),
    (dict(sigma_min=80.0, sigma_max=1.0), r"`sigma_min` must be below sigma_max \(1.0\); got 80.0"),
    (dict(eval_num_samples=1), r"`eval_num_samples` must be an integer >= 2; got 1"),
    (dict(amed_num_batches=0), r"`amed_num_batches` must be an integer >= 1; got 0"),
    (dict(amed_plugin_inserted=0), r"`amed_plugin_inserted` must be an integer >= 1; got 0"),
    (dict(amed_batch_size=-8), r"`amed_batch_size` must be an integer >= 1; got -8"),
    (dict(amed_plugin_teacher="dpm"), r"`amed_plugin_teacher` must be one of \('heun', 'ipndm'\); got 'dpm'"),
    (dict(amed_objective="end"), r"`amed_objective` must be one of \('interval', 'final'\); got 'end'"),
    (dict(amed_teacher_grid="rho1"), r"`amed_teacher_grid` must be one of \('official', 'rho7'\); got 'rho1'"),
    (dict(fd_bootstrap=1), r"`fd_bootstrap` must be an int: 0 \(off\) or the number of bootstrap resamples "
                           r"\(>= 2\); got 1"),
    (dict(fd_bootstrap=True), r"`fd_bootstrap` must be an int: 0 \(off\) .*; got True"),
])
def test_bad_evaluate_keys_fail_before_training(overrides, message, tmp_path):
    from kexue_jax.core.config import ConfigError
    from kexue_jax.core.train import train_and_evaluate

    config = _nfe_config("smoke")
    for k, v in overrides.items():
        config[k] = v
    with pytest.raises(ConfigError, match=message):
        train_and_evaluate(config, str(tmp_path))
    assert not (tmp_path / "checkpoints").exists()  # nothing trained, nothing saved


def test_r05_controls_need_no_distillation_keys():
    from kexue_jax.core.config import validate_train_config

    config = _nfe_config("smoke", sampler_names=("ipndm", "amed_plugin_r05"), amed_num_batches=0)
    validate_train_config(config, num_devices=1)


# --- the paired-bootstrap entries of the results ---------------------------------------------------------

def test_bootstrap_results_standard_errors_and_paired_probabilities():
    from kexue_jax.diffusion import metrics
    from kexue_jax.diffusion.nfe_table import bootstrap_results

    rng = np.random.default_rng(0)
    n, k = 300, 3
    ref = (np.zeros(k), np.eye(k))
    base = rng.normal(size=(n, k)) + 1.0  # mean 1 away from the reference in every coordinate
    feats = {("ddim", 5): base, ("ipndm", 5): base + 0.5,  # same rows, farther from the reference
             ("amed", 5): base - 0.5,  # same rows, nearer: below DDIM and iPNDM in EVERY replicate
             ("amed_plugin", 5): base.copy(),  # identical to DDIM: never strictly below it
             ("amed", 3): base, ("heun_100_steps", 199): base}
    out = bootstrap_results(feats, ref, num_resamples=50, seed=3)
    reps = metrics.paired_bootstrap_fd({f"{a}@{b}": f for (a, b), f in feats.items()}, ref, num_resamples=50, seed=3)
    for (name, nfe) in feats:  # the s.e. is the replicates' std (ddof 1) of the same paired resamples
        np.testing.assert_allclose(out[f"test/fd_se_{name}_nfe{nfe}"], np.std(reps[f"{name}@{nfe}"], ddof=1),
                                   rtol=1e-12)
        assert out[f"test/fd_se_{name}_nfe{nfe}"] > 0
    # shifting every row by c changes FD by 2c·(m − μ_r) + ‖c‖² exactly, so the order is the same in every replicate
    assert out["test/p_below_ddim_amed_nfe5"] == 1.0 and out["test/p_below_ipndm_amed_nfe5"] == 1.0
    assert out["test/p_below_ddim_amed_plugin_nfe5"] == 0.0 and out["test/p_below_ipndm_amed_plugin_nfe5"] == 1.0
    p_keys = {key for key in out if key.startswith("test/p_below_")}
    # only AMED rows, only against baselines that have a cell at the same NFE (no DPM-Solver++ here, no NFE-3 DDIM)
    assert p_keys == {"test/p_below_ddim_amed_nfe5", "test/p_below_ipndm_amed_nfe5",
                      "test/p_below_ddim_amed_plugin_nfe5", "test/p_below_ipndm_amed_plugin_nfe5"}


def test_bootstrap_results_probability_is_a_fraction_of_replicates():
    """Two independent sets at the same distance from the reference: P is neither 0 nor 1, and it is the
    fraction of replicates computed directly."""
    from kexue_jax.diffusion import metrics
    from kexue_jax.diffusion.nfe_table import bootstrap_results

    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(200, 2)), rng.normal(size=(200, 2))
    ref = (np.zeros(2), np.eye(2))
    out = bootstrap_results({("amed", 5): a, ("ddim", 5): b}, ref, num_resamples=400, seed=0)
    reps = metrics.paired_bootstrap_fd({"amed@5": a, "ddim@5": b}, ref, num_resamples=400, seed=0)
    p = out["test/p_below_ddim_amed_nfe5"]
    assert p == np.mean(reps["amed@5"] < reps["ddim@5"]) and 0.02 < p < 0.98


def test_an_unknown_config_variant_is_a_clear_error():
    with pytest.raises(ValueError, match=r"variant must be one of \(None, 'smoke', 'mnist5k', 'cifar10'\); "
                                         r"got 'mnist'"):
        _nfe_config("mnist")

"""The NFE table: every sampler of `kexue_jax.samplers` at a fixed number of denoiser evaluations, scored by FD-digits.

Used as the `evaluate` hook of the shared trainer after training an EDM-preconditioned U-Net
(`precond.edm_loss`), so the trained denoiser D(x, σ) = c_skip x + c_out F(c_in x, ¼ ln σ) is at hand. For each
sampler and each NFE it picks the grid size whose `samplers.nfe(...)` equals the target (grids as in
zju-pi/diff-sampler: polynomial ρ = 7 for Euler/Heun/DPM-Solver-2/iPNDM, logSNR for DPM-Solver++/UniPC,
time-uniform ρ = 2 for DEIS, time-uniform ρ = 1 for AMED-Solver), draws samples from the same x_T, and scores
them with FD-digits (`metrics.image_metrics`; not comparable to Inception FID) and with the RMSE to the Heun-100
samples from the same x_T (the ODE-solution error). AMED predictors are distilled per NFE from a Heun teacher
(`samplers.train_amed_predictor`; M = 1 inserted step for AMED-Solver, `amed_plugin_inserted` and
`amed_plugin_teacher` for the plugin; `amed_objective` 'interval', the official per-interval regression, or
'final', ours: the error of the whole student run). Rows named `*_afs_mean` use AFS with the per-pixel data
mean (ours).
With `fd_bootstrap` = B > 0, a paired bootstrap over the samples (`metrics.paired_bootstrap_fd`, one resample of
the x_T rows for every cell) gives each FD's standard error and, for every AMED row, the probability that its FD
is below that of DDIM, DPM-Solver++(3M) and iPNDM at the same NFE (the paper's NFE-5 ordering, `BASELINES`).

References:
  https://kexue.fm/archives/9881 ; Zhou et al., "Fast ODE-based Sampling for Diffusion Models in Around 5 Steps"
  (arXiv:2312.00094); Karras et al. 2022 (arXiv:2206.00364).
"""
from __future__ import annotations

import csv
import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from kexue_jax.diffusion import metrics, schedules
from kexue_jax.diffusion.ddpm import to_images
from kexue_jax.diffusion.precond import edm_denoiser

__all__ = ["SAMPLERS", "BASELINES", "grid_for_nfe", "evaluate", "bootstrap_results"]

# The rows the paper's NFE-5 claim puts AMED-Solver and AMED-Plugin below (anchors.md §5.2).
BASELINES = ("ddim", "dpm_solver_pp_3m", "ipndm")

# The AMED teacher grid: 'official' (the student's grid type with (M+1)·N + 1 points, as diff-sampler) or
# 'rho7' (σ^{1/7}-linear refinement of the student grid; differs for AMED-Solver's time-uniform grid).
TEACHER_GRIDS = ("official", "rho7")

# name -> (sampler attribute, options, grid kind, ρ)
SAMPLERS = {
    "ddim": ("sample_euler", {}, "polynomial", 7.0),
    "heun": ("sample_heun", {}, "polynomial", 7.0),
    "dpm_solver_2": ("sample_dpm_solver_2", {}, "polynomial", 7.0),
    "dpm_solver_pp_3m": ("sample_dpm_solver_pp", {"order": 3}, "logsnr", None),
    "ipndm": ("sample_ipndm", {}, "polynomial", 7.0),
    "unipc": ("sample_unipc", {}, "logsnr", None),
    "deis": ("sample_deis", {}, "time_uniform", 2.0),
    "amed": ("sample_amed", {"afs": True}, "time_uniform", 1.0),
    "amed_plugin": ("sample_amed_plugin", {}, "polynomial", 7.0),
    # The paper's odd-NFE plugin rows (NFE 3/5/7/9, anchors.md §5.2) use AFS: N steps cost 2N − 1.
    "amed_plugin_afs": ("sample_amed_plugin", {"afs": True}, "polynomial", 7.0),
    # Controls without distillation: the plugin with r = ½, c = a = 1 fixed, i.e. iPNDM on the same grid with
    # its geometric midpoints inserted. What the learned predictor adds is the gap to these rows.
    "amed_plugin_r05": ("sample_amed_plugin", {}, "polynomial", 7.0),
    "amed_plugin_afs_r05": ("sample_amed_plugin", {"afs": True}, "polynomial", 7.0),
    # Ours, not the paper's: AFS with the data mean, d = (x − μ)/√(1 + σ²) (`samplers.afs_direction`), μ the
    # per-pixel mean of the training images in model space. The paper's AFS assumes zero-mean data; mnist in
    # [−1, 1] has mean −0.73, digits −0.37 (CIFAR-10 about −0.05).
    "amed_afs_mean": ("sample_amed", {"afs": True, "afs_mean": "data"}, "time_uniform", 1.0),
    "amed_plugin_afs_mean": ("sample_amed_plugin", {"afs": True, "afs_mean": "data"}, "polynomial", 7.0),
    "amed_plugin_afs_mean_r05": ("sample_amed_plugin", {"afs": True, "afs_mean": "data"}, "polynomial", 7.0),
}


def grid_for_nfe(sampler, target: int, kind: str, rho, sigma_min: float, sigma_max: float, *,
                 allow_zero: bool = True, **opts):
    """The first grid (n = 2, 3, ...) with NFE = target, ending at σ_min (diff-sampler's convention: every
    evaluation is a solver step, none is spent on a final denoise to σ = 0); a grid ending at 0 only when
    `allow_zero` and no σ_min-ending grid has that NFE."""
    from kexue_jax import samplers

    for zero in ((False, True) if allow_zero else (False,)):
        for n in range(2, target + 3):
            sig = schedules.sigma_grid(kind, n, sigma_min, sigma_max, rho, append_zero=zero)
            try:
                if samplers.nfe(sampler, sig, **opts) == target:
                    return sig
            except (ValueError, TypeError):
                continue
    return None


def evaluate(model, dataset, *, key, config, workdir):
    """Samples with every sampler at every NFE in `config.nfe_list`; returns FD-digits per (sampler, NFE)."""
    from kexue_jax import data as data_lib
    from kexue_jax import samplers

    levels = int(dataset.levels)
    sigma_data = float(config.loss_kwargs.get("sigma_data", 0.5))
    sigma_min, sigma_max = float(config.sigma_min), float(config.sigma_max)
    graphdef, state = nnx.split(model)
    shape = dataset.example_shape["image"]
    n = int(config.eval_num_samples)
    x_T = sigma_max * jax.random.normal(jax.random.fold_in(key, 0), (n, *shape), jnp.float32)
    train = data_lib.load(config.dataset, "train", data_dir=config.get("data_dir"))
    classifier = metrics.train_classifier(train, steps=int(config.classifier_steps), seed=config.seed)
    # μ for the "afs_mean": "data" rows: the mean training image in model space (dequantised, [−1, 1])
    data_mean = jnp.asarray(2.0 * (np.asarray(train.arrays["image"], np.float64).mean(0) + 0.5) / levels - 1.0,
                            jnp.float32)

    def denoisers(state):
        m = nnx.merge(graphdef, state)
        plain = edm_denoiser(lambda x_in, c: m(x_in, c), sigma_data)

        def with_features(x, sigma):
            feats = {}

            def net(x_in, c):
                out, f = m(x_in, c, return_features=True)
                feats["f"] = f
                return out

            return edm_denoiser(net, sigma_data)(x, sigma), feats["f"]

        return plain, with_features

    feature_dim = int(jax.eval_shape(lambda s: denoisers(s)[1](x_T[:1], jnp.ones((1,)))[1], state).shape[-1])

    def score(x):
        imgs = np.asarray(to_images(jnp.asarray(x), levels))
        out = metrics.image_metrics(classifier, imgs, train, dataset)
        return out, imgs

    results, rows = {}, []
    n_boot = int(config.get("fd_bootstrap", 0))
    feats = {}  # (name, nfe) -> classifier features of the samples, for the paired bootstrap
    # Reference: 100-step Heun (NFE 199) on the polynomial grid.
    ref_sig = schedules.edm_sigmas(101, sigma_min, sigma_max, 7.0, append_zero=True)
    ref = jax.jit(lambda s, x: samplers.sample_heun(denoisers(s)[0], x, ref_sig))(state, x_T)
    out, ref_imgs = score(ref)
    ref_nfe = samplers.nfe(samplers.sample_heun, ref_sig)
    if n_boot:
        feats[("heun_100_steps", ref_nfe)] = metrics.classifier_features(classifier, ref_imgs)[0]
    results["test/fd_heun100"] = out["test/fd"]
    # The whole test split's FD (test/fd_data) and, since FD is biased upward at small n, real images at the
    # samples' size n: the references to read the cells against.
    results.update(metrics.data_fd_references(classifier, train, dataset, n, seed=int(config.seed)))
    rows.append(dict(sampler="heun_100_steps", nfe=ref_nfe, fd=out["test/fd"],
                     coverage=out["test/class_coverage"], entropy=out["test/class_entropy"], rmse_ref=0.0))
    grids = {}
    for name in config.sampler_names:
        attr, opts, kind, rho = SAMPLERS[name]
        if opts.get("afs_mean") == "data":
            opts = dict(opts, afs_mean=data_mean)
        fn = getattr(samplers, attr)
        for target in config.nfe_list:
            extra = dict(opts)
            if name.startswith("amed"):
                extra["predictor"] = (np.zeros(1), np.ones(1), np.ones(1))  # placeholder for the NFE count
            sig = grid_for_nfe(fn, target, kind, rho, sigma_min, sigma_max, allow_zero=not name.startswith("amed"),
                               **extra)
            if sig is None:
                rows.append(dict(sampler=name, nfe=target, fd=float("nan"), coverage=float("nan"),
                                 entropy=float("nan"), rmse_ref=float("nan")))
                continue
            grids[(name, target)] = sig
            if name.endswith("_r05"):  # fixed r = ½, c = a = 1: no distillation
                ones = np.ones(len(sig) - 1, np.float32)
                x = jax.jit(lambda s, x: fn(denoisers(s)[0], x, sig, **dict(opts, predictor=(0.5 * ones, ones, ones)))
                            )(state, x_T)
            elif name.startswith("amed"):
                solver = attr == "sample_amed"  # AMED-Solver; else the plugin on iPNDM
                pred = samplers.AMEDPredictor(feature_dim, scale_dir=0.01, scale_time=0.0 if solver else 0.2,
                                              rngs=nnx.Rngs(config.seed))
                den_aux = denoisers(state)[1]
                bsz = int(config.amed_batch_size)
                inserted = 1 if solver else config.get("amed_plugin_inserted", 2)
                # 'official': the teacher runs on the student's grid type with (M+1)·N + 1 points (diff-sampler);
                # 'rho7': on the σ^{1/7}-linear refinement (the tables recorded before 2026-11-23). The two are the
                # same grid for the ρ = 7 plugin rows, not for AMED-Solver's time-uniform grid.
                fine = (schedules.sigma_grid(kind, (inserted + 1) * (len(sig) - 1) + 1, sigma_min, sigma_max, rho)
                        if config.get("amed_teacher_grid", "official") == "official" else None)
                pred, _ = samplers.train_amed_predictor(
                    pred, den_aux, sig, lambda k: sigma_max * jax.random.normal(k, (bsz, *shape), jnp.float32),
                    key=jax.random.fold_in(key, 1000 + target), num_batches=int(config.amed_num_batches),
                    inserted=inserted, has_aux=True, teacher_sigmas=fine,
                    afs=extra.get("afs", False), afs_mean=extra.get("afs_mean"),
                    student="amed" if solver else "ipndm",
                    teacher="heun" if solver else config.get("amed_plugin_teacher", "heun"),
                    objective=config.get("amed_objective", "interval"))
                extra = dict(opts, predictor=pred)
                pg, pstate = nnx.split(pred)
                x = jax.jit(lambda s, ps, x: fn(denoisers(s)[1], x, sig, has_aux=True,
                                                **dict(opts, predictor=nnx.merge(pg, ps))))(state, pstate, x_T)
            else:
                x = jax.jit(lambda s, x: fn(denoisers(s)[0], x, sig, **opts))(state, x_T)
            out, imgs = score(x)
            if n_boot:
                feats[(name, target)] = metrics.classifier_features(classifier, imgs)[0]
            # RMSE to the Heun-100 samples from the same x_T (model space, [−1, 1]): the ODE-solution error,
            # less noisy than FD and blind to sample quality
            rmse = float(jnp.sqrt(jnp.mean(jnp.square(x - ref))))
            results[f"test/fd_{name}_nfe{target}"] = out["test/fd"]
            results[f"test/rmse_ref_{name}_nfe{target}"] = rmse
            rows.append(dict(sampler=name, nfe=target, fd=out["test/fd"], coverage=out["test/class_coverage"],
                             entropy=out["test/class_entropy"], rmse_ref=rmse))
            if workdir is not None and target == 5:
                from kexue_jax.core.metrics import save_image_grid
                save_image_grid(imgs[:64] / (levels - 1), os.path.join(workdir, f"samples_{name}_nfe5.png"),
                                title=f"{name}, NFE 5")
    boot_lines = []
    if n_boot and feats:
        # The reference is the training split's statistics, as in `metrics.image_metrics`.
        ref_stats = metrics.gaussian_statistics(metrics.classifier_features(classifier, train.arrays["image"])[0])
        results.update(bootstrap_results(feats, ref_stats, num_resamples=n_boot, seed=int(config.seed)))
        for row in rows:
            row["fd_se"] = results.get(f"test/fd_se_{row['sampler']}_nfe{row['nfe']}", float("nan"))
        results["test/fd_se_heun100"] = results.pop(f"test/fd_se_heun_100_steps_nfe{ref_nfe}")
        bases = [b for b in BASELINES if b in config.sampler_names]
        nfes = list(config.nfe_list)
        boot_lines = [f"\nPaired bootstrap ({n_boot} resamples of the {n} x_T rows): standard error of each FD:\n",
                      "| sampler | " + " | ".join(f"NFE {k}" for k in nfes) + " |", "|---" * (len(nfes) + 1) + "|",
                      "| heun_100_steps | " + " | ".join(f"{results['test/fd_se_heun100']:.3f}" for _ in nfes) + " |"]
        for name in config.sampler_names:
            vals = [results.get(f"test/fd_se_{name}_nfe{k}", float("nan")) for k in nfes]
            boot_lines.append(f"| {name} | " + " | ".join(f"{v:.3f}" for v in vals) + " |")
        if bases:
            boot_lines += [f"\nP(FD of the row < FD of {' / '.join(bases)}) at the same NFE, same resamples:\n",
                           "| sampler | " + " | ".join(f"NFE {k}" for k in nfes) + " |",
                           "|---" * (len(nfes) + 1) + "|"]
            for name in config.sampler_names:
                if name.startswith("amed"):
                    cells = [" / ".join(f"{results[key]:.2f}" if (key := f"test/p_below_{b}_{name}_nfe{k}")
                                        in results else "–" for b in bases) for k in nfes]
                    boot_lines.append(f"| {name} | " + " | ".join(cells) + " |")
    if workdir is not None:
        with open(os.path.join(workdir, "nfe_table.csv"), "w", newline="") as f:
            fields = ["sampler", "nfe", "fd", "coverage", "entropy", "rmse_ref"] + (["fd_se"] if boot_lines else [])
            w = csv.DictWriter(f, fieldnames=fields, restval=float("nan"))
            w.writeheader()
            w.writerows(rows)
        nfes = list(config.nfe_list)
        head = ["| sampler | " + " | ".join(f"NFE {k}" for k in nfes) + " |", "|---" * (len(nfes) + 1) + "|"]
        lines = list(head)
        for name in config.sampler_names:
            vals = [results.get(f"test/fd_{name}_nfe{k}", float("nan")) for k in nfes]
            lines.append(f"| {name} | " + " | ".join(f"{v:.3f}" for v in vals) + " |")
        test_at_n = (f"{results['test/fd_test_subsets_mean']:.3f} ± {results['test/fd_test_subsets_std']:.3f}"
                     if results['test/fd_data_num_images'] >= n else f"n/a (fewer than {n} test images)")
        lines.append(f"\nFD-digits ({n} samples per cell; not comparable to Inception FID), 100-step Heun reference: "
                     f"{results['test/fd_heun100']:.3f}; the whole test split vs train: {results['test/fd_data']:.3f} "
                     f"({int(results['test/fd_data_num_images'])} images); real images at the cells' size ({n}; FD "
                     f"grows as n falls), mean ± sd over 20 random subsets: test split {test_at_n}, training split "
                     f"{results['test/fd_train_subsets_mean']:.3f} ± {results['test/fd_train_subsets_std']:.3f}")
        lines += ["\nRMSE to the 100-step Heun samples from the same x_T (model space, [−1, 1]):\n"] + head
        for name in config.sampler_names:
            vals = [results.get(f"test/rmse_ref_{name}_nfe{k}", float("nan")) for k in nfes]
            lines.append(f"| {name} | " + " | ".join(f"{v:.4f}" for v in vals) + " |")
        lines += boot_lines
        with open(os.path.join(workdir, "nfe_table.md"), "w") as f:
            f.write("\n".join(lines) + "\n")
    return results


def bootstrap_results(features, reference, *, num_resamples: int, seed: int = 0,
                      baselines=BASELINES) -> dict[str, float]:
    """The paired-bootstrap entries of an NFE table's results.

    Args:
      features: {(sampler name, nfe): classifier features [n, k]}, row i of every cell from the same x_T.
      reference: (mean [k], covariance [k, k]) of the reference features (the training split).
      num_resamples, seed: as in `metrics.paired_bootstrap_fd` (one resample of the rows for every cell).
      baselines: the rows every AMED row is compared with.
    Returns:
      `test/fd_se_<name>_nfe<k>`: the standard deviation (ddof 1) of the cell's replicate FDs, for every cell;
      `test/p_below_<b>_<name>_nfe<k>`: for every cell whose name starts with 'amed' and every baseline b that
      has a cell at the same NFE, the fraction of replicates in which the cell's FD is strictly below b's.
    """
    reps = metrics.paired_bootstrap_fd({f"{a}@{k}": f for (a, k), f in features.items()}, reference,
                                       num_resamples=num_resamples, seed=seed)
    out = {f"test/fd_se_{name}_nfe{k}": float(np.std(reps[f"{name}@{k}"], ddof=1)) for (name, k) in features}
    for (name, k) in features:
        if name.startswith("amed"):
            for b in baselines:
                if (b, k) in features:
                    out[f"test/p_below_{b}_{name}_nfe{k}"] = float(np.mean(reps[f"{name}@{k}"] < reps[f"{b}@{k}"]))
    return out


def check_config(config) -> None:
    """The keys only `evaluate` reads, checked by the shared trainer with the rest of the config before training
    (a typo in `sampler_names` would otherwise surface after hours of training)."""
    from kexue_jax import samplers
    from kexue_jax.core.config import check_int, check_positive, require

    names = config.get("sampler_names")
    require(isinstance(names, (tuple, list)) and len(names) > 0 and len(set(names)) == len(names)
            and all(isinstance(n, str) and n in SAMPLERS for n in names),
            "sampler_names", f"a non-empty tuple of distinct names from {list(SAMPLERS)}", names)
    nfes = config.get("nfe_list")
    require(isinstance(nfes, (tuple, list)) and len(nfes) > 0, "nfe_list", "a non-empty tuple of integers >= 1",
            nfes)
    for value in nfes:
        check_int(value, "nfe_list")
    for key in ("sigma_min", "sigma_max"):
        check_positive(config.get(key), key)
    require(config.sigma_min < config.sigma_max, "sigma_min", f"below sigma_max ({config.sigma_max})",
            config.sigma_min)
    check_int(config.get("eval_num_samples"), "eval_num_samples", minimum=2)
    check_int(config.get("classifier_steps"), "classifier_steps")
    n_boot = config.get("fd_bootstrap", 0)
    require(isinstance(n_boot, int) and not isinstance(n_boot, bool) and (n_boot == 0 or n_boot >= 2),
            "fd_bootstrap", "an int: 0 (off) or the number of bootstrap resamples (>= 2)", n_boot)
    if any(n.startswith("amed") and not n.endswith("_r05") for n in names):  # distilled predictors
        check_int(config.get("amed_num_batches"), "amed_num_batches")
        check_int(config.get("amed_batch_size"), "amed_batch_size")
        check_int(config.get("amed_plugin_inserted", 2), "amed_plugin_inserted")
        teacher = config.get("amed_plugin_teacher", "heun")
        require(teacher in samplers.TEACHERS, "amed_plugin_teacher", f"one of {samplers.TEACHERS}", teacher)
        objective = config.get("amed_objective", "interval")
        require(objective in samplers.OBJECTIVES, "amed_objective", f"one of {samplers.OBJECTIVES}", objective)
        grid = config.get("amed_teacher_grid", "official")
        require(grid in TEACHER_GRIDS, "amed_teacher_grid", f"one of {TEACHER_GRIDS}", grid)
    sigma_data = (config.get("loss_kwargs") or {}).get("sigma_data", 0.5)
    check_positive(sigma_data, "loss_kwargs.sigma_data")


evaluate.check_config = check_config

"""AMED: exact limiting cases of one step, the spec §12.4 oracle numbers, AFS asymptotics, a distilled
predictor approaching the oracle, and the plugin's reduction to iPNDM and DPM-Solver++ (with its oracle beating
DPM-Solver++ at equal NFE)."""
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from kexue_jax import samplers as S


def _gauss(d=64, rows=512, seed=0):
    rng = np.random.default_rng(seed)
    mu = jnp.asarray(0.5 * rng.standard_normal(d))
    return mu, 0.5, jnp.asarray(80.0 * rng.standard_normal((rows, d)))


def test_limits_r0_is_euler_and_r_half_is_geometric_midpoint():
    with jax.enable_x64(True):
        mu, s, x = _gauss(d=8, rows=4)
        den = S.gaussian_denoiser(mu, s)
        sc, sn = 3.0, 0.7
        d = (x - den(x, sc)) / sc
        euler = x + (sn - sc) * d
        np.testing.assert_allclose(S.amed_step(den, x, sc, sn, d, 0.0), euler, rtol=0, atol=1e-13)
        mid = np.sqrt(sc * sn)
        xm = x + (mid - sc) * d
        geo = x + (sn - sc) * (xm - den(xm, mid)) / mid
        np.testing.assert_allclose(S.amed_step(den, x, sc, sn, d, 0.5), geo, rtol=0, atol=1e-13)
        dpm2 = S.sample_dpm_solver_2(den, x, np.array([sc, sn]))
        np.testing.assert_allclose(S.amed_step(den, x, sc, sn, d, 0.5), dpm2, rtol=0, atol=1e-13)
        # c scales the whole step exactly: x + c·Δ·d_mid.
        np.testing.assert_allclose(S.amed_step(den, x, sc, sn, d, 0.5, 1.01) - x, 1.01 * (geo - x), atol=1e-12)


def _oracle(den, x_T, sig, targets_fn):
    """Per-step (r, c) grid search (r ∈ {0, 0.005, …, 1}, c ∈ [0.98, 1.02] 41 values), AFS on step 0."""
    rs, cs = jnp.linspace(0, 1, 201), jnp.linspace(0.98, 1.02, 41)
    x = x_T
    for i in range(len(sig) - 1):
        sc, sn = sig[i], sig[i + 1]
        d = S.afs_direction(x, sc) if i == 0 else (x - den(x, sc)) / sc
        res = x - targets_fn(x, sc, sn)

        def err(r):
            sm = sn ** r * sc ** (1 - r)
            xm = x + (sm - sc) * d
            v = (sn - sc) * (xm - den(xm, sm)) / sm
            # ‖res + c·v‖² is a quadratic in c: evaluate it on the c grid without re-running the denoiser.
            return jnp.sum(res ** 2) + 2 * cs * jnp.sum(res * v) + cs ** 2 * jnp.sum(v ** 2)

        e = jax.jit(jax.vmap(err))(rs)
        k = int(jnp.argmin(e))
        x = S.amed_step(den, x, sc, sn, d, rs[k // 41], cs[k % 41])
    return x


def test_oracle_reproduces_spec_on_gaussian_data():
    # Spec §12.4: NFE 5 -> oracle RMSE about 4e-4 vs Euler 0.227 (d = 64, 512 rows, EDM ρ = 7 grid).
    with jax.enable_x64(True):
        mu, s, x_T = _gauss()
        den = S.gaussian_denoiser(mu, s)
        exact = S.gaussian_ode_solution(x_T, mu, s, 80.0, 0.002)
        sig = S.edm_sigmas(4)  # 3 AMED steps, AFS: NFE 5
        assert S.nfe(S.sample_amed, sig, afs=True) == 5
        out = _oracle(den, x_T, sig, lambda x, a, b: S.gaussian_ode_solution(x, mu, s, a, b))
        amed_rmse = float(jnp.sqrt(jnp.mean((out - exact) ** 2)))
        eul = S.sample_euler(den, x_T, S.edm_sigmas(6))
        euler_rmse = float(jnp.sqrt(jnp.mean((eul - exact) ** 2)))
    assert 2e-4 < amed_rmse < 8e-4, amed_rmse
    assert abs(euler_rmse - 0.227) < 0.01, euler_rmse


def _heun_solve(den, x, sc, sn, n):
    return S.sample_heun(den, x, S.logsnr_sigmas(n + 1, sn, sc))


def test_oracle_beats_euler_on_tight_mixture():
    # 8 tight Gaussians (std 0.05, centres ~ N(0, I), d = 64): curved trajectories; spec NFE 5: 0.174 vs 0.229.
    rng = np.random.default_rng(1)
    centres = jnp.asarray(rng.standard_normal((8, 64)), jnp.float32)
    den = S.mixture_denoiser(centres, 0.05)
    x_T = jnp.asarray(80.0 * rng.standard_normal((128, 64)), jnp.float32)
    ref = _heun_solve(den, x_T, 80.0, 0.002, 600)
    out = _oracle(den, x_T, S.edm_sigmas(4), lambda x, a, b: _heun_solve(den, x, float(a), float(b), 100))
    amed_rmse = float(jnp.sqrt(jnp.mean((out - ref) ** 2)))
    euler_rmse = float(jnp.sqrt(jnp.mean((S.sample_euler(den, x_T, S.edm_sigmas(6)) - ref) ** 2)))
    assert amed_rmse < 0.9 * euler_rmse, (amed_rmse, euler_rmse)


def test_afs_is_exact_derivative_as_sigma_grows():
    # Unit Gaussian data: exact d = x·σ/(1 + σ²); AFS d = x/√(1 + σ²); relative gap 1 − σ/√(1 + σ²).
    with jax.enable_x64(True):
        x = jnp.asarray(np.random.default_rng(0).standard_normal((4, 16)))
        den = S.gaussian_denoiser(jnp.zeros(()), 1.0)
        gaps = []
        for sigma in (10.0, 100.0, 1000.0):
            exact = (sigma * x - den(sigma * x, sigma)) / sigma
            afs = S.afs_direction(sigma * x, sigma)
            gap = float(jnp.max(jnp.abs(afs - exact) / jnp.abs(exact)))
            np.testing.assert_allclose(gap, np.sqrt(1 + sigma ** -2) - 1, rtol=1e-6)
            gaps.append(gap)
    assert gaps[0] > 10 * gaps[1] > 100 * gaps[2] and gaps[2] < 1e-6


def test_trained_predictor_approaches_oracle():
    # Features: the mean of x scaled by 1/√(1 + σ²) (unit scale at every σ), as spec §12.4 (2) suggests.
    # The distilled student can only be as good as its Heun teacher, so the teacher gets M = 32 inserted
    # points (RMSE about 1e-3); the official M = 1 teacher is itself 0.28 off on this 3-step grid.
    d = 16
    mu, s, _ = _gauss(d=d, rows=1)
    mu = mu.astype(jnp.float32)
    exact_den = S.gaussian_denoiser(mu, s)

    def den(x, sigma):
        return exact_den(x, sigma), jnp.mean(x, -1, keepdims=True) / jnp.sqrt(1 + jnp.reshape(sigma, (-1, 1)) ** 2)

    sig = S.edm_sigmas(4)
    pred = S.AMEDPredictor(1, scale_dir=0.01, rngs=nnx.Rngs(0))
    sample = lambda k: 80.0 * jax.random.normal(k, (64, d))  # noqa: E731
    pred, losses = S.train_amed_predictor(pred, den, sig, sample, key=jax.random.key(0), num_batches=300,
                                          inserted=32, has_aux=True)
    x_T = 80.0 * jax.random.normal(jax.random.key(99), (256, d))
    exact = S.gaussian_ode_solution(x_T, mu, s, 80.0, 0.002)
    rmse = lambda y: float(jnp.sqrt(jnp.mean((y - exact) ** 2)))  # noqa: E731
    trained = rmse(S.sample_amed(den, x_T, sig, predictor=pred, has_aux=True))
    teacher = rmse(S.amed_teacher_trajectory(exact_den, x_T, sig, inserted=32)[-1])
    euler = rmse(S.sample_euler(exact_den, x_T, S.edm_sigmas(6)))
    oracle = rmse(_oracle(exact_den, x_T, sig, lambda x, a, b: S.gaussian_ode_solution(x, mu, s, a, b)))
    assert float(losses[-1].sum()) < 0.01 * float(losses[0].sum())
    assert trained < 0.01 * euler, (trained, teacher, oracle, euler)
    assert trained < 2 * teacher + oracle, (trained, teacher, oracle, euler)


def test_plugin_with_midpoints_is_ipndm_on_the_refined_grid():
    with jax.enable_x64(True):
        mu, s, x_T = _gauss(d=8, rows=4)
        den = S.gaussian_denoiser(mu, s)
        sig = S.edm_sigmas(5)
        n = len(sig) - 1
        half = (np.full(n, 0.5), np.ones(n), np.ones(n))
        fine = S.refine_sigmas(sig, 1, rho=None)  # log-uniform insertion = geometric midpoints
        for afs in (False, True):
            got = S.sample_amed_plugin(den, x_T, sig, predictor=half, afs=afs)
            want = S.sample_ipndm(den, x_T, fine, afs=afs)
            np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
        assert S.nfe(S.sample_amed_plugin, sig, afs=True) == S.nfe(S.sample_ipndm, fine, afs=True) == 7


# --------------------------------------------------------------------------------- AMED-Plugin on DPM-Solver++
def _inserted_grid(sig, r):
    """sigmas with s_i = σ_{i+1}^{r_i}·σ_i^{1−r_i} inserted into interval i."""
    mids = sig[1:] ** r * sig[:-1] ** (1 - r)
    return np.concatenate([np.stack([sig[:-1], mids], 1).reshape(-1), sig[-1:]])


def test_plugin_dpm_solver_pp_is_dpm_solver_pp_on_the_refined_grid():
    # With c = a = 1 the plugin is multistep DPM-Solver++ on the grid with s_i inserted, the D and λ history
    # running through the inserted points; unequal r_i make the λ steps unequal (tests r₀, r₁ per row).
    with jax.enable_x64(True):
        mu, s, x_T = _gauss(d=8, rows=4)
        den = S.gaussian_denoiser(mu, s)
        sig = S.edm_sigmas(5)
        r = np.array([0.3, 0.5, 0.7, 0.45])
        fixed = (r, np.ones(4), np.ones(4))
        fine = _inserted_grid(sig, r)
        np.testing.assert_allclose(_inserted_grid(sig, np.full(4, 0.5)), S.refine_sigmas(sig, 1, rho=None),
                                   rtol=1e-14)
        for order, afs, lof in ((3, False, True), (3, True, False), (2, True, True)):
            got = S.sample_amed_plugin(den, x_T, sig, predictor=fixed, base="dpm_solver_pp", max_order=order,
                                       afs=afs, lower_order_final=lof)
            want = S.sample_dpm_solver_pp(den, x_T, fine, order=order, afs=afs, lower_order_final=lof)
            np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12,
                                       err_msg=f"order={order} afs={afs} lof={lof}")
        # Per-row r: each row equals DPM-Solver++(3M) on its own refined grid.
        rows = np.array([0.2, 0.8])
        per_row = (np.tile(rows, (4, 1)), np.ones((4, 2)), np.ones((4, 2)))
        got = S.sample_amed_plugin(den, x_T[:2], sig, predictor=per_row, base="dpm_solver_pp")
        for b in range(2):
            want = S.sample_dpm_solver_pp(den, x_T[b:b + 1], _inserted_grid(sig, np.full(4, rows[b])), order=3)
            np.testing.assert_allclose(got[b:b + 1], want, rtol=1e-12, atol=1e-12)
        assert S.nfe(S.sample_amed_plugin, sig, base="dpm_solver_pp") == S.nfe(S.sample_dpm_solver_pp, fine) == 8
        assert S.nfe(S.sample_amed_plugin, sig, base="dpm_solver_pp", afs=True, denoise_to_zero=True) == 8


def test_plugin_dpm_solver_pp_direction_and_time_scales():
    # One interval: x_mid = (s/σ₀)x + (1 − s/σ₀)D(x, σ₀) (first order); the second sub-step is
    # x' = (σ₁/s)·x_mid + c·W with W linear in the history, so c scales exactly the model part. With
    # a ≠ 1 the denoiser is evaluated at a·s but the coefficients use s: equal to a denoiser that rescales σ.
    with jax.enable_x64(True):
        mu, s, x_T = _gauss(d=8, rows=4)
        den = S.gaussian_denoiser(mu, s)
        sig = np.array([5.0, 0.8])
        r = 0.35
        s_mid = sig[1] ** r * sig[0] ** (1 - r)
        x_mid = (s_mid / sig[0]) * x_T + (1 - s_mid / sig[0]) * den(x_T, sig[0])
        base = (sig[1] / s_mid) * x_mid
        one = S.sample_amed_plugin(den, x_T, sig, predictor=([r], [1.0], [1.0]), base="dpm_solver_pp")
        scaled = S.sample_amed_plugin(den, x_T, sig, predictor=([r], [1.03], [1.0]), base="dpm_solver_pp")
        np.testing.assert_allclose(scaled, base + 1.03 * (one - base), rtol=1e-12, atol=1e-12)
        # order 2 on one interval: W = ψ₁D_mid + ½ψ₁(h/h₀)(D_mid − D₀), ψ₁ = 1 − σ₁/s.
        h0, h = np.log(sig[0] / s_mid), np.log(s_mid / sig[1])
        d0, d_mid = den(x_T, sig[0]), den(x_mid, 1.1 * s_mid)
        psi = 1 - sig[1] / s_mid
        want = base + psi * d_mid + 0.5 * psi * (h / h0) * (d_mid - d0)
        got = S.sample_amed_plugin(den, x_T, sig, predictor=([r], [1.0], [1.1]), base="dpm_solver_pp",
                                   lower_order_final=False)
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


def _plugin_oracle_r(den, x_T, sig, target, grid, **opts):
    """Per-interval r (c = a = 1) by joint grid search (every combination of `grid` over the N intervals, run as
    extra rows with a per-row r) minimising the mean squared error to `target` at sigmas[-1]."""
    n, b = len(sig) - 1, x_T.shape[0]
    combos = np.array(list(itertools.product(grid, repeat=n)))  # [K, N]
    r = np.repeat(combos.T, b, axis=1)  # [N, K·b], row j·b + m: trajectory m with combination j
    ones = np.ones_like(r)
    out = S.sample_amed_plugin(den, jnp.tile(x_T, (len(combos), 1)), sig, predictor=(r, ones, ones),
                               base="dpm_solver_pp", **opts)
    err = jnp.mean((out - jnp.tile(target, (len(combos), 1))) ** 2, axis=-1).reshape(len(combos), b).mean(-1)
    return combos[int(jnp.argmin(err))]


def test_plugin_dpm_solver_pp_oracle_beats_dpm_solver_pp_at_equal_nfe():
    # Gaussian data (exact D and solution), d = 64, EDM ρ = 7 grids, σ ∈ [0.002, 80], NFE 6 (no AFS): the
    # oracle r of 3 plugin intervals, fitted on 16 trajectories, against 6-step DPM-Solver++ on 128 held-out
    # ones (measured: 3M 2.3e-4 vs 1.8e-3, 2M 1.7e-4 vs 3.4e-2 in-sample).
    with jax.enable_x64(True):
        mu, s, x_fit = _gauss(rows=16)
        x_T = jnp.asarray(80.0 * np.random.default_rng(7).standard_normal((128, 64)))
        den = S.gaussian_denoiser(mu, s)
        exact = lambda x: S.gaussian_ode_solution(x, mu, s, 80.0, 0.002)  # noqa: E731
        rmse = lambda y: float(jnp.sqrt(jnp.mean((y - exact(x_T)) ** 2)))  # noqa: E731
        sig = S.edm_sigmas(4)
        assert S.nfe(S.sample_amed_plugin, sig, base="dpm_solver_pp") == S.nfe(S.sample_dpm_solver_pp,
                                                                              S.edm_sigmas(7)) == 6
        for order in (3, 2):
            r = _plugin_oracle_r(den, x_fit, sig, exact(x_fit), np.linspace(0.1, 0.9, 9), max_order=order)
            ones = np.ones(3)
            plug = rmse(S.sample_amed_plugin(den, x_T, sig, predictor=(r, ones, ones), base="dpm_solver_pp",
                                             max_order=order))
            plain = rmse(S.sample_dpm_solver_pp(den, x_T, S.edm_sigmas(7), order=order))
            assert plug < 0.5 * plain, (order, plug, plain, r)


def test_distillation_loss_threads_the_dpm_solver_pp_history():
    # Chaining the plugin's distillation loss over the intervals, each started from the plugin's own state and
    # fed the returned history, reproduces the sampler: the loss against the sampler's next state is 0 (a
    # wrong history, order or λ would leave O(1) errors), and against a shifted target it is Σ_dims shift².
    with jax.enable_x64(True):
        mu, s, x_T = _gauss(d=8, rows=4)
        den = S.gaussian_denoiser(mu, s)
        sig = S.edm_sigmas(5)
        r = np.array([0.3, 0.6, 0.4, 0.5])
        fixed = (r, np.full(4, 1.01), np.full(4, 0.98))
        opts = dict(base="dpm_solver_pp", afs=True, lower_order_final=False)
        x, hist = x_T, None
        for i in range(4):
            nxt = S.sample_amed_plugin(den, x_T, sig[:i + 2], predictor=fixed, **opts)
            loss, (rr, c, a, hist) = S.amed_distillation_loss(
                fixed, den, x, nxt + 0.5, sig[i], sig[i + 1], first_afs=i == 0, step=i, student="dpm_solver_pp",
                history=hist, num_steps=4, lower_order_final=False)
            np.testing.assert_allclose(float(loss), 8 * 0.25, rtol=1e-9)
            np.testing.assert_allclose(rr, r[i])
            x = nxt


def test_trained_dpm_solver_pp_plugin_beats_dpm_solver_pp():
    # A time-only predictor (r per interval), distilled against a Heun teacher with M = 8 inserted points,
    # makes the 2M plugin as accurate as its teacher: measured RMSE 0.0105 (teacher 0.0105) vs 2M DPM-Solver++
    # 0.034 at the same NFE 6 and 0.082 for the untrained plugin (r ≈ ½).
    d = 16
    mu, s, _ = _gauss(d=d, rows=1)
    mu = mu.astype(jnp.float32)
    den = S.gaussian_denoiser(mu, s)
    sig = S.edm_sigmas(4)
    pred = S.AMEDPredictor(0, scale_dir=0.0, rngs=nnx.Rngs(0))
    pred, losses = S.train_amed_predictor(pred, den, sig, lambda k: 80.0 * jax.random.normal(k, (32, d)),
                                          key=jax.random.key(0), num_batches=40, inserted=8, afs=False,
                                          student="dpm_solver_pp", max_order=2)
    x_T = 80.0 * jax.random.normal(jax.random.key(99), (256, d))
    exact = S.gaussian_ode_solution(x_T, mu, s, 80.0, 0.002)
    rmse = lambda y: float(jnp.sqrt(jnp.mean((y - exact) ** 2)))  # noqa: E731
    trained = rmse(S.sample_amed_plugin(den, x_T, sig, predictor=pred, base="dpm_solver_pp", max_order=2))
    teacher = rmse(S.amed_teacher_trajectory(den, x_T, sig, inserted=8)[-1])
    plain = rmse(S.sample_dpm_solver_pp(den, x_T, S.edm_sigmas(7), order=2))
    assert float(losses[-1].sum()) < 0.7 * float(losses[0].sum())
    assert trained < 1.2 * teacher and trained < 0.5 * plain, (trained, teacher, plain)


def test_plugin_bad_inputs():
    den = S.gaussian_denoiser(jnp.zeros(()), 1.0)
    x, sig = jnp.ones((2, 3)), S.edm_sigmas(5)
    fixed = (np.full(4, 0.5), np.ones(4), np.ones(4))
    cases = [
        (lambda: S.sample_amed_plugin(den, x, sig, predictor=fixed, base="unipc"),
         "`base` must be one of ('ipndm', 'dpm_solver_pp'); got 'unipc'"),
        (lambda: S.sample_amed_plugin(den, x, sig, predictor=fixed, base="dpm_solver_pp", max_order=4),
         "`max_order` must be an integer in [1, 3]; got 4"),
        (lambda: S.sample_amed_plugin(den, x, sig, predictor=fixed, base="ipndm", max_order=5),
         "`max_order` must be an integer in [1, 4]; got 5"),
        (lambda: S.sample_amed_plugin(den, x, sig, predictor=(np.array([0.5, 0.5, 1.0, 0.5]),) + fixed[1:],
                                      base="dpm_solver_pp"),
         "`predictor` r must lie in the open interval (0, 1) for base='dpm_solver_pp'"),
        (lambda: S.train_amed_predictor(S.AMEDPredictor(0, rngs=nnx.Rngs(0)), den, sig, lambda k: x,
                                        key=jax.random.key(0), num_batches=1, student="unipc"),
         "`student` must be one of ('amed', 'ipndm', 'dpm_solver_pp'); got 'unipc'"),
        (lambda: S.amed_distillation_loss(fixed, den, x, x, 2.0, 1.0, student="dpm_solver_pp"),
         "`num_steps` must be a positive int (N, the student intervals) for student='dpm_solver_pp'; got None"),
    ]
    for call, message in cases:
        with pytest.raises(ValueError) as err:
            call()
        assert message in str(err.value), str(err.value)


def test_ipndm_teacher_is_ipndm_on_the_refined_grid():
    # The official CIFAR-10 plugin teacher (launch.sh --sampler_tea=ipndm): its state at the student's σ_i is
    # iPNDM run on the refined grid up to that point, and the last state is iPNDM on the whole refined grid.
    with jax.enable_x64(True):
        mu, s, x_T = _gauss(d=8, rows=4)
        den = S.mixture_denoiser(jnp.stack([mu - 0.3, mu + 0.5]), 0.2)
        sig = S.edm_sigmas(4)
        for m, order in ((2, 4), (1, 2)):
            fine = S.refine_sigmas(sig, m, 7.0)
            traj = S.amed_teacher_trajectory(den, x_T, sig, inserted=m, teacher="ipndm", max_order=order)
            assert traj.shape == (len(sig),) + x_T.shape
            np.testing.assert_array_equal(traj[0], x_T)
            for i in range(1, len(sig)):
                np.testing.assert_allclose(sig[i], fine[i * (m + 1)], rtol=1e-12)
                want = S.sample_ipndm(den, x_T, fine[:i * (m + 1) + 1], max_order=order)
                np.testing.assert_allclose(traj[i], want, rtol=1e-12, atol=1e-12, err_msg=f"M={m} i={i}")
        heun = S.amed_teacher_trajectory(den, x_T, sig, inserted=2)
        assert float(jnp.max(jnp.abs(heun[-1] - traj[-1]))) > 1e-6  # a different solver
    with pytest.raises(ValueError, match="`teacher` must be one of"):
        S.amed_teacher_trajectory(den, x_T, sig, teacher="euler")


def test_teacher_on_a_time_uniform_grid_is_heun_on_the_finer_time_uniform_grid():
    # The official teacher grid is the student's schedule type with (M+1)(N−1)+1 points. A time-uniform grid
    # (AMED-Solver's) nests in the finer time-uniform grid, but not in its σ^{1/7} refinement (the default).
    with jax.enable_x64(True):
        mu, s, x_T = _gauss(d=8, rows=4)
        den = S.mixture_denoiser(jnp.stack([mu - 0.3, mu + 0.5]), 0.2)
        sig, m = S.time_uniform_sigmas(4), 2
        fine = S.time_uniform_sigmas(3 * (m + 1) + 1)
        np.testing.assert_allclose(fine[::m + 1], sig, rtol=1e-12)
        traj = S.amed_teacher_trajectory(den, x_T, sig, inserted=m, teacher_sigmas=fine)
        for i in range(1, len(sig)):
            want = S.sample_heun(den, x_T, fine[:i * (m + 1) + 1])  # no σ = 0: a full Heun step everywhere
            np.testing.assert_allclose(traj[i], want, rtol=1e-12, atol=1e-12, err_msg=f"i={i}")
        rho7 = S.refine_sigmas(sig, m, 7.0)
        assert np.max(np.abs(np.log(rho7 / fine))) > 0.1  # the two teacher grids really differ
        np.testing.assert_array_equal(S.teacher_grid(sig, m), rho7)  # the default is unchanged
        np.testing.assert_array_equal(S.amed_teacher_trajectory(den, x_T, sig, inserted=m, teacher_sigmas=rho7),
                                      S.amed_teacher_trajectory(den, x_T, sig, inserted=m))
    with pytest.raises(ValueError, match=r"`teacher_sigmas` must hold the 4 student sigmas at every 3-th of its "
                                         r"10 points \(inserted=2\); got 9 points"):
        S.amed_teacher_trajectory(den, x_T, sig, inserted=m, teacher_sigmas=S.time_uniform_sigmas(9))
    with pytest.raises(ValueError, match="`teacher_sigmas` must hold the 4 student sigmas"):
        S.train_amed_predictor(S.AMEDPredictor(4, rngs=nnx.Rngs(0)), den, sig, lambda k: x_T, key=jax.random.key(0),
                               num_batches=1, inserted=m, teacher_sigmas=S.edm_sigmas(10))


@pytest.mark.parametrize("teacher", ["heun", "ipndm"])
def test_training_regresses_the_chosen_teacher_with_the_data_mean_afs(teacher):
    # First batch, first interval: the loss train_amed_predictor records is amed_distillation_loss of the
    # untrained predictor against that teacher's point at σ₁ (AFS with the data mean on the first step).
    d = 8
    mu, s, _ = _gauss(d=d, rows=1)
    mu = mu.astype(jnp.float32)
    den = S.mixture_denoiser(jnp.stack([mu - 0.3, mu + 0.5]), 0.2)
    sig = S.edm_sigmas(4)
    pred = S.AMEDPredictor(0, scale_dir=0.01, scale_time=0.2, rngs=nnx.Rngs(0))
    key = jax.random.key(3)
    sample = lambda k: 80.0 * jax.random.normal(k, (16, d))  # noqa: E731
    _, losses = S.train_amed_predictor(pred, den, sig, sample, key=key, num_batches=1, inserted=2,
                                       student="ipndm", afs=True, afs_mean=mu, teacher=teacher)
    x_T = sample(jax.random.fold_in(key, 0))
    traj = S.amed_teacher_trajectory(den, x_T, sig, inserted=2, teacher=teacher)
    want, _ = S.amed_distillation_loss(pred, den, x_T, traj[1], sig[0], sig[1], first_afs=True, afs_mean=mu,
                                       student="ipndm", num_steps=len(sig) - 1)
    np.testing.assert_allclose(losses[0, 0], want, rtol=1e-5)
    other = S.amed_teacher_trajectory(den, x_T, sig, inserted=2, teacher="ipndm" if teacher == "heun" else "heun")
    assert float(jnp.max(jnp.abs(other[1] - traj[1]))) > 1e-3  # the two teachers really differ at σ₁


# --- the 'final' distillation objective (ours): the error of the whole student run -----------------------

def _mixture_with_features(d=8):
    rng = np.random.default_rng(0)
    mu = jnp.asarray(0.5 * rng.standard_normal(d), jnp.float32)
    den0 = S.mixture_denoiser(jnp.stack([mu - 0.6, mu + 0.6]), 0.1)

    def den(x, sigma):  # features: mean of x at unit scale (as test_trained_predictor_approaches_oracle)
        return den0(x, sigma), jnp.mean(x, -1, keepdims=True) / jnp.sqrt(1 + jnp.reshape(sigma, (-1, 1)) ** 2)
    return mu, den0, den


@pytest.mark.parametrize("student", ["amed", "ipndm", "dpm_solver_pp"])
def test_final_objective_is_the_samplers_error_to_the_teachers_end(student):
    # The loss recorded for batch 0 (before any update) is the squared error, summed over dims and averaged
    # over rows, of the SAMPLER run with the untrained predictor from that batch's x_T, to the teacher's end.
    # In float64: at |x_T| ≈ 80, float32 rounding alone (scan vs unrolled) moves DPM-Solver++'s loss by 4e-5.
    # The predictor itself computes in float32 (r, c, a to ~1e-7), which leaves ~1e-8 relative: rtol 1e-6.
    with jax.enable_x64(True):
        _final_objective_check(student)


def _final_objective_check(student):
    mu, den0, den = _mixture_with_features()
    mu = mu.astype(jnp.float64)
    sig = S.edm_sigmas(4)
    pred = S.AMEDPredictor(1, scale_dir=0.01, scale_time=0.0 if student == "amed" else 0.2, rngs=nnx.Rngs(0))
    key = jax.random.key(5)
    sample = lambda k: 80.0 * jax.random.normal(k, (16, 8))  # noqa: E731
    _, losses = S.train_amed_predictor(pred, den, sig, sample, key=key, num_batches=2, inserted=2, has_aux=True,
                                       student=student, afs=True, afs_mean=mu, objective="final")
    assert losses.shape == (2, 1)
    x_T = sample(jax.random.fold_in(key, 0))
    end = S.amed_teacher_trajectory(den0, x_T, sig, inserted=2)[-1]
    if student == "amed":
        out = S.sample_amed(den, x_T, sig, predictor=pred, has_aux=True, afs=True, afs_mean=mu)
    else:
        out = S.sample_amed_plugin(den, x_T, sig, predictor=pred, has_aux=True, afs=True, afs_mean=mu, base=student)
    want = float(jnp.mean(jnp.sum((out - end) ** 2, axis=-1)))
    assert losses.dtype == jnp.float64
    np.testing.assert_allclose(losses[0, 0], want, rtol=1e-6)
    # and it is not the official objective's first interval error (a different quantity)
    _, per_interval = S.train_amed_predictor(pred, den, sig, sample, key=key, num_batches=1, inserted=2,
                                             has_aux=True, student=student, afs=True, afs_mean=mu)
    assert abs(float(per_interval[0, 0]) - want) > 1e-3 * want


def test_final_objective_ends_nearer_the_teacher_than_the_greedy_one():
    # Plugin on iPNDM, 3 intervals (NFE 5 with AFS), a tight 2-component mixture, 200 batches each: on held-out
    # x_T the 'final' predictor's samples are nearer the teacher's (M = 16) end than the official objective's.
    # Measured: RMSE 0.0091 vs 0.0338 (the r = ½ control: 0.206).
    mu, den0, den = _mixture_with_features()
    sig = S.edm_sigmas(4)
    sample = lambda k: 80.0 * jax.random.normal(k, (64, 8))  # noqa: E731
    x_T = 80.0 * jax.random.normal(jax.random.key(99), (512, 8))
    end = S.amed_teacher_trajectory(den0, x_T, sig, inserted=16)[-1]
    rmse = {}
    for objective in S.OBJECTIVES:
        pred = S.AMEDPredictor(1, scale_dir=0.01, scale_time=0.2, rngs=nnx.Rngs(0))
        pred, losses = S.train_amed_predictor(pred, den, sig, sample, key=jax.random.key(0), num_batches=200,
                                              inserted=16, has_aux=True, student="ipndm", afs=True, afs_mean=mu,
                                              objective=objective)
        out = S.sample_amed_plugin(den, x_T, sig, predictor=pred, has_aux=True, afs=True, afs_mean=mu)
        rmse[objective] = float(jnp.sqrt(jnp.mean((out - end) ** 2)))
        assert float(losses[-1].sum()) < 0.2 * float(losses[0].sum()), objective
    assert rmse["final"] < 0.5 * rmse["interval"], rmse


def test_unknown_objective_is_rejected():
    _, _, den = _mixture_with_features()
    pred = S.AMEDPredictor(1, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"`objective` must be one of \('interval', 'final'\); got 'end'"):
        S.train_amed_predictor(pred, den, S.edm_sigmas(4), lambda k: jnp.zeros((2, 8)), key=jax.random.key(0),
                               num_batches=1, has_aux=True, objective="end")

"""Samplers against step formulas written here from the papers, in float64 NumPy (+ scipy quadrature).

Each reference is the paper's update rule applied to the same smooth nonlinear denoiser (the exact posterior
mean of a two-point mixture), so a wrong coefficient anywhere in a step changes the library's output at
orders of magnitude above the tolerance: UniPC's ρ's with both B(h) (Zhao et al. 2023), DEIS tAB's integrals
over the VP time (Zhang & Chen 2022), DPM-Solver-2 with r ≠ ½ (Lu et al. 2022), EDM's stochastic Heun
(Karras et al. 2022, Algorithm 2), the AMED-Solver step and the AMED-Plugin on iPNDM (Zhou et al. 2023,
spec §12.2).
"""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import integrate, optimize

from kexue_jax import samplers as S

MU, STD = 1.3, 0.4  # data: ½N(−MU, STD²) + ½N(MU, STD²) in every coordinate


def _den(x, sigma):
    """Exact D(x, σ) of the two-point mixture: (s²x + σ²μ·tanh(μx/(s² + σ²)))/(s² + σ²); σ scalar or [b].

    Works on NumPy arrays (the references) and on JAX arrays (the library), with the same formula.
    """
    xp = jnp if isinstance(x, jax.Array) else np
    sig = xp.asarray(sigma, x.dtype)
    sig = sig.reshape(sig.shape + (1,) * (x.ndim - sig.ndim))  # [1, 1] or [b, 1]
    v = STD ** 2 + sig ** 2
    return (STD ** 2 * x + sig ** 2 * MU * xp.tanh(MU * x / v)) / v


def _d(x, sigma):
    return (x - _den(x, sigma)) / sigma


def _edm_grid(n, lo, hi, rho=7.0):
    """Karras et al. (5): σ_i = (σ_max^{1/ρ} + i/(n−1)·(σ_min^{1/ρ} − σ_max^{1/ρ}))^ρ, n points."""
    return (hi ** (1 / rho) + np.arange(n) / (n - 1) * (lo ** (1 / rho) - hi ** (1 / rho))) ** rho


def _x_T(sigma_max, rows=4, dim=3, seed=0):
    return sigma_max * np.random.default_rng(seed).standard_normal((rows, dim))


def _gap(got, want):
    return float(np.max(np.abs(np.asarray(got) - want)) / np.max(np.abs(want)))


# ----------------------------------------------------------------------------------------------------- UniPC
def _phi(k, z):
    """φ_k(z) = ∫₀¹ e^{(1−τ)z} τ^{k−1}/(k−1)! dτ (so φ₁ = (e^z − 1)/z, φ_{k+1} = (φ_k − 1/k!)/z), by quadrature."""
    val = integrate.quad(lambda t: np.exp((1 - t) * z) * t ** (k - 1), 0.0, 1.0, epsabs=0, epsrel=1e-13)[0]
    return val / math.factorial(k - 1)


def _unipc_update(lam, sig, i, x, hist, p, variant, corrector, d_new=None):
    """One UniP-p (or UniC-p with d_new = D(x^p_{i+1}, σ_{i+1})) step from σ_i in data-prediction form.

    Zhao et al. (data prediction, α = 1, B and φ evaluated at −h): with D1_k = (D_{i−k} − D_i)/r_k,
    r_k = (λ_{i−k} − λ_i)/h, x_{i+1} = (σ_{i+1}/σ_i)·x_i + (1 − e^{−h})·D_i − B(−h)·Σ_k ρ_k·D1_k, where ρ solves
    the order conditions Σ_k ρ_k r_k^{n−1} = −h·n!·φ_{n+1}(−h)/B(−h), n = 1..m (matching the Taylor term
    D^{(n)}h^n/n! of the exact ∫ e^{−(h−u)} D(λ_i + u) du). The predictor uses m = p − 1 history points, the
    corrector adds r_p = 1 with D1_p = D(x^p_{i+1}) − D_i. As documented (the official code's choice): the UniP-2
    predictor takes ρ = ½ and the UniC-1 corrector ρ = ½ (both the h → 0 limit of the order condition).
    """
    D = hist[i]
    if sig[i + 1] == 0:  # into σ = 0 (p = 1): x = D
        return D
    h = lam[i + 1] - lam[i]
    out = sig[i + 1] / sig[i] * x + (1 - np.exp(-h)) * D
    rs = [(lam[i - k] - lam[i]) / h for k in range(1, p)]
    d1 = [(hist[i - k] - D) / r for k, r in zip(range(1, p), rs)]
    if corrector:
        rs, d1 = rs + [1.0], d1 + [d_new - D]
    if not rs:
        return out
    B = -h if variant == "bh1" else np.expm1(-h)
    if len(rs) == 1 and (p == 2 or corrector):
        rho = np.array([0.5])
    else:
        g = [-h * math.factorial(n) * _phi(n + 1, -h) / B for n in range(1, len(rs) + 1)]
        rho = np.linalg.solve(np.array([[r ** (n - 1) for r in rs] for n in range(1, len(rs) + 1)]), g)
    return out - B * sum(c * v for c, v in zip(rho, d1))


def _unipc_reference(x, sig, order, variant, lower_order_final=True):
    """UniPC sampling: evaluate D at the predicted point, correct the previous step with it (UniC), predict the
    next (UniP) from the corrected state; the last step is not corrected. p_i = min(order, i + 1), lowered to
    N − i when N < 10 (the module's documented rule), 1 into σ = 0."""
    n = len(sig) - 1
    with np.errstate(divide="ignore"):
        lam = -np.log(sig)
    p = [min(order, i + 1, n - i if lower_order_final and n < 10 else order) for i in range(n)]
    if sig[-1] == 0:
        p[-1] = 1
    hist, x_pred = [], x
    for i in range(n):
        d_new = _den(x_pred, sig[i])
        if i > 0:
            x = _unipc_update(lam, sig, i - 1, x, hist, p[i - 1], variant, True, d_new)
        hist.append(d_new)
        x_pred = _unipc_update(lam, sig, i, x, hist, p[i], variant, False)
    return x_pred


@pytest.mark.parametrize("n,end", [(6, 0.05), (12, 0.0)], ids=["N6_lowered", "N12_to_zero"])
@pytest.mark.parametrize("variant", ["bh1", "bh2"])
@pytest.mark.parametrize("order", [2, 3])
def test_unipc_matches_the_papers_predictor_corrector(order, variant, n, end):
    # N = 6 < 10: the final orders are lowered (p = 1, 2, 3, 3, 2, 1 for order 3); N = 12: they are not.
    sig = np.concatenate([_edm_grid(n, 0.05, 10.0), [0.0]]) if end == 0 else _edm_grid(n + 1, end, 10.0)
    x_T = _x_T(sig[0])
    want = _unipc_reference(x_T, sig, order, variant)
    with jax.enable_x64(True):
        got = S.sample_unipc(_den, jnp.asarray(x_T), sig, order=order, variant=variant)
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)
    if n < 10:  # the lowering matters: without it the result differs (and matches the unlowered reference)
        with jax.enable_x64(True):
            got = S.sample_unipc(_den, jnp.asarray(x_T), sig, order=order, variant=variant,
                                 lower_order_final=False)
        want_full = _unipc_reference(x_T, sig, order, variant, lower_order_final=False)
        np.testing.assert_allclose(got, want_full, rtol=1e-10, atol=1e-12)
        assert _gap(want_full, want) > 1e-4


# ------------------------------------------------------------------------------------------------------ DEIS
def _vp_schedule(sig_min, sig_max, eps=1e-3):
    """The VP-SDE (Song et al.) with linear β(t) = β_min + β_d·t: ᾱ_t = exp(−½β_d t² − β_min t) (the *variance*
    kept), σ(t) = √(1/ᾱ_t − 1), with (β_d, β_min) fixed by σ(eps) = σ_min and σ(1) = σ_max (EDM Table 1)."""
    # log(1 + σ(t)²) = ½β_d·t² + β_min·t at t = eps and t = 1
    bd, bmin = np.linalg.solve(np.array([[0.5 * eps ** 2, eps], [0.5, 1.0]]),
                               np.log1p(np.array([sig_min, sig_max]) ** 2))
    return (lambda t: bmin + bd * t), (lambda t: np.exp(-0.5 * bd * t ** 2 - bmin * t))


def _deis_tab_coefficients(sig, order):
    """Zhang & Chen's tAB weights in the VE state x/√ᾱ: C_ij = ∫_{t_i}^{t_{i+1}} ½β(τ)/(√ᾱ_τ√(1 − ᾱ_τ))·ℓ_j(τ) dτ,
    ℓ_j the Lagrange basis on the VP times t_i, …, t_{i−p+1} of the grid (the VP exponential-integrator weight
    ½Ψ(t_{i+1}, τ)β(τ)/√(1 − ᾱ_τ) divided by √ᾱ_{t_{i+1}}; it equals dσ/dτ). VP times by root finding."""
    beta, abar = _vp_schedule(sig[sig > 0].min(), sig[0])
    sigma_of_t = lambda t: np.sqrt(1 / abar(t) - 1)  # noqa: E731
    t = np.array([optimize.brentq(lambda u: sigma_of_t(u) - v, 1e-3, 1.0, xtol=1e-15, rtol=1e-15) for v in sig])
    n = len(sig) - 1
    C = np.zeros((n, order))
    for i in range(n):
        nodes = t[i - np.arange(min(order, i + 1))]
        for j in range(len(nodes)):
            def integrand(u):
                ell = np.prod([(u - nodes[k]) / (nodes[j] - nodes[k]) for k in range(len(nodes)) if k != j])
                return 0.5 * beta(u) / (np.sqrt(abar(u)) * np.sqrt(1 - abar(u))) * ell
            C[i, j] = integrate.quad(integrand, t[i], t[i + 1], epsabs=0, epsrel=1e-13, limit=200)[0]
    return C


@pytest.mark.parametrize("order", [2, 3, 4])
def test_deis_tab_matches_quadrature_over_vp_time(order):
    # The library integrates ℓ_j(τ(σ)) over σ by 16-point Gauss–Legendre (inverse map t(σ)); the reference
    # integrates over t with scipy quad (forward map σ(t), VP times by root finding). Measured gap of the weights
    # ≤ 7e-13 of the step's largest weight (the interval next to σ_min, where τ(σ) bends most; ≤ 6e-15 elsewhere),
    # so 1e-10 leaves room for the fixed-order rule; the beta_min 0.5 → 0.25 slip moves them by 8–50%.
    sig = _edm_grid(9, 0.002, 80.0)
    C = _deis_tab_coefficients(sig, order)
    a, b = S.deis_coefficients(sig, order=order)
    np.testing.assert_array_equal(a, 1.0)
    gap = np.max(np.abs(b - C) / np.max(np.abs(C), axis=1, keepdims=True))
    assert gap < 1e-10, gap
    x = _x_T(sig[0])
    hist = []
    for i in range(len(sig) - 1):  # x_{i+1} = x_i + Σ_j C_ij·d_{i−j}, d = (x − D)/σ = ε̂
        hist.insert(0, _d(x, sig[i]))
        x = x + sum(C[i, j] * hist[j] for j in range(min(order, i + 1)))
    with jax.enable_x64(True):
        got = S.sample_deis(_den, jnp.asarray(_x_T(sig[0])), sig, order=order)
    np.testing.assert_allclose(got, x, rtol=1e-10, atol=1e-12)


# -------------------------------------------------------------------------------------------- DPM-Solver-2
@pytest.mark.parametrize("r", [0.3, 0.7])
def test_dpm_solver_2_with_r_off_half_matches_lu_et_al(r):
    # Lu et al. 2022 (DPM-Solver-2, intermediate λ_s = λ_i + r·h), noise form with α = 1, ε = d:
    #   u = x − σ_s(e^{rh} − 1)·ε(x, σ_i),  x' = x − σ_{i+1}(e^h − 1)·ε_i − σ_{i+1}/(2r)·(e^h − 1)·(ε(u, σ_s) − ε_i).
    sig = np.array([5.0, 1.7, 0.4])
    x = _x_T(sig[0])
    x_T = x
    for i in range(2):
        lam_i, lam_n = -np.log(sig[i]), -np.log(sig[i + 1])
        h = lam_n - lam_i
        s = np.exp(-(lam_i + r * h))
        e_i = _d(x, sig[i])
        u = x - s * np.expm1(r * h) * e_i
        x = x - sig[i + 1] * np.expm1(h) * e_i - sig[i + 1] / (2 * r) * np.expm1(h) * (_d(u, s) - e_i)
    with jax.enable_x64(True):
        got = S.sample_dpm_solver_2(_den, jnp.asarray(x_T), sig, r=r)
    np.testing.assert_allclose(got, x, rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------------------------------- Heun with churn
def _heun_churn_reference(x, sig, key, s_churn, s_min, s_max, s_noise):
    """Karras et al. 2022, Algorithm 2, with ε_i of row b = N(0, I) from fold_in(fold_in(key, b), i) (the
    documented key use of `sample_heun` / `row_normal`)."""
    n = len(sig) - 1
    for i in range(n):
        gamma = min(s_churn / n, np.sqrt(2) - 1) if s_min <= sig[i] <= s_max else 0.0
        eps = np.stack([np.asarray(jax.random.normal(jax.random.fold_in(jax.random.fold_in(key, b), i),
                                                     x.shape[1:], jnp.float64)) for b in range(x.shape[0])])
        t_hat = sig[i] + gamma * sig[i]
        x_hat = x + np.sqrt(t_hat ** 2 - sig[i] ** 2) * s_noise * eps
        d = _d(x_hat, t_hat)
        x = x_hat + (sig[i + 1] - t_hat) * d
        if sig[i + 1] != 0:
            x = x_hat + (sig[i + 1] - t_hat) * (0.5 * d + 0.5 * _d(x, sig[i + 1]))
    return x


@pytest.mark.parametrize("s_churn,s_min,s_max,s_noise,end", [
    (3.0, 0.5, 5.0, 1.0, 0.3),  # S_churn/N = 1 > √2 − 1: capped; σ = 10 outside [S_min, S_max]: no churn there
    (0.6, 0.0, np.inf, 1.007, 0.0),  # S_churn/N = 0.2 below the cap; last step Euler into σ = 0
], ids=["capped_window", "uncapped_to_zero"])
def test_heun_churn_matches_edm_algorithm_2(s_churn, s_min, s_max, s_noise, end):
    sig = np.array([10.0, 3.0, 1.0, end])
    x_T = _x_T(sig[0])
    with jax.enable_x64(True):
        key = jax.random.key(3)
        want = _heun_churn_reference(x_T, sig, key, s_churn, s_min, s_max, s_noise)
        got = S.sample_heun(_den, jnp.asarray(x_T), sig, key=key, s_churn=s_churn, s_min=s_min, s_max=s_max,
                            s_noise=s_noise)
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)
        # the churn is visible: the deterministic run differs by O(1)
        assert _gap(S.sample_heun(_den, jnp.asarray(x_T), sig), want) > 1e-2


# ------------------------------------------------------------------------------------------------------ AMED
R, C, A = np.array([0.3, 0.65, 0.8]), np.array([1.2, 0.85, 1.1]), np.array([0.8, 1.25, 0.9])


def _amed_step_reference(x, sc, sn, d_cur, r, c, a):
    """Spec §12.2: t_mid = t_next^r·t_cur^{1−r}, x_mid = x + (t_mid − t_cur)·d_cur,
    d_mid = (x_mid − D(x_mid, a·t_mid))/t_mid, x_next = x + c·(t_next − t_cur)·d_mid (r, c, a scalars or [b])."""
    col = lambda v: np.reshape(v, np.shape(v) + (1,) * (x.ndim - np.ndim(v)))  # noqa: E731
    t_mid = sn ** np.asarray(r) * sc ** (1 - np.asarray(r))
    x_mid = x + (col(t_mid) - sc) * d_cur
    d_mid = (x_mid - _den(x_mid, a * t_mid)) / col(t_mid)
    return x + col(c) * (sn - sc) * d_mid


@pytest.mark.parametrize("afs", [False, True])
def test_amed_solver_matches_the_spec_step(afs):
    # r, c, a far from the neutral (½, 1, 1): ignoring a, dividing d_mid by a·t_mid or scaling by c² all fail.
    sig = np.array([20.0, 4.0, 1.1, 0.25])
    x = x_T = _x_T(sig[0])
    for i in range(3):
        d = x / np.sqrt(1 + sig[i] ** 2) if (afs and i == 0) else _d(x, sig[i])  # AFS: analytical first step
        x = _amed_step_reference(x, sig[i], sig[i + 1], d, R[i], C[i], A[i])
    with jax.enable_x64(True):
        got = S.sample_amed(_den, jnp.asarray(x_T), sig, predictor=(R, C, A), afs=afs)
        np.testing.assert_allclose(got, x, rtol=1e-12, atol=1e-12)
        # one step with per-row (r, c, a) [b]
        rows = x_T.shape[0]
        r, c, a = np.linspace(0.2, 0.9, rows), np.linspace(0.8, 1.3, rows), np.linspace(1.3, 0.7, rows)
        d = _d(x_T, sig[0])
        got = S.amed_step(_den, jnp.asarray(x_T), sig[0], sig[1], jnp.asarray(d), jnp.asarray(r), jnp.asarray(c),
                          jnp.asarray(a))
    np.testing.assert_allclose(got, _amed_step_reference(x_T, sig[0], sig[1], d, r, c, a), rtol=1e-12, atol=1e-12)


def test_amed_plugin_on_ipndm_matches_the_documented_substeps():
    # iPNDM (Zhang & Chen: Adams–Bashforth on d with the equal-step weights, order min(4, j + 1) at sub-step j) on
    # the grid σ_0, s_0, σ_1, s_1, … with s_i = σ_{i+1}^{r_i}σ_i^{1−r_i}; on the odd sub-step s_i → σ_{i+1} the
    # slope comes from D(x, a_i·s_i)/s_i and c_i multiplies the AB increment (module docstring; spec §12.2).
    ab = [np.array([1.0]), np.array([3.0, -1.0]) / 2, np.array([23.0, -16.0, 5.0]) / 12,
          np.array([55.0, -59.0, 37.0, -9.0]) / 24]
    sig = np.array([20.0, 4.0, 1.1, 0.25])
    x = x_T = _x_T(sig[0])
    hist, j = [], 0
    for i in range(3):
        s = sig[i + 1] ** R[i] * sig[i] ** (1 - R[i])
        for t_from, t_to, t_eval, scale in ((sig[i], s, sig[i], 1.0), (s, sig[i + 1], A[i] * s, C[i])):
            hist.insert(0, (x - _den(x, t_eval)) / t_from)
            w = ab[min(4, j + 1) - 1]
            x = x + scale * (t_to - t_from) * sum(wk * dk for wk, dk in zip(w, hist))
            j += 1
    with jax.enable_x64(True):
        got = S.sample_amed_plugin(_den, jnp.asarray(x_T), sig, predictor=(R, C, A), base="ipndm")
    np.testing.assert_allclose(got, x, rtol=1e-12, atol=1e-12)

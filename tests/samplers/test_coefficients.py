"""Step coefficients against closed forms (the class of bug found in physicsnemo PR #1932: a wrong multiplier
on the first multistep step), and exactness of each multistep formula on polynomials of its degree."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import integrate

from kexue_jax import samplers as S

SIG = np.array([14.0, 5.0, 2.2, 0.9, 0.3, 0.11])


def test_dpm_solver_pp_first_steps_closed_form():
    with jax.enable_x64(True):
        g = {s: v for s, v in zip(SIG[:3], (0.3, -1.1, 2.0))}
        den = lambda x, s: jnp.full_like(x, jnp.select([s == k for k in g], list(g.values())))  # noqa: E731
        x0 = jnp.asarray(np.random.default_rng(0).standard_normal((3, 5)))
        s0, s1, s2 = SIG[:3]
        x1 = s1 / s0 * x0 + (1 - s1 / s0) * g[s0]
        np.testing.assert_allclose(S.sample_dpm_solver_pp(den, x0, SIG[:2]), x1, rtol=1e-14)
        h, r = np.log(s1 / s2), np.log(s0 / s1) / np.log(s1 / s2)
        x2 = s2 / s1 * x1 + (1 - np.exp(-h)) * ((1 + 1 / (2 * r)) * g[s1] - g[s0] / (2 * r))
        got = S.sample_dpm_solver_pp(den, x0, SIG[:3], order=2, lower_order_final=False)
        np.testing.assert_allclose(got, x2, rtol=1e-13)
    a, b = S.dpm_solver_pp_coefficients(SIG[:3], order=2, lower_order_final=False)
    np.testing.assert_allclose(b[1, :2], (1 - np.exp(-h)) * np.array([1 + 1 / (2 * r), -1 / (2 * r)]), rtol=1e-14)
    np.testing.assert_allclose(a, SIG[1:3] / SIG[:2], rtol=1e-15)


@pytest.mark.parametrize("order,exact3", [(1, False), (2, False), (3, True)])
def test_dpm_solver_pp_exact_on_polynomial_data_prediction(order, exact3):
    # With D = g(λ) (independent of x) the exact VE flow is x' = (σ'/σ)x + σ'∫_λ^λ' e^u g(u) du. Orders 1 and
    # 3 integrate g of degree p − 1 exactly; canonical 2M replaces the exact φ₂ = φ₁/h + 1 multiplier of
    # D1₀ = (D_i − D_{i−1})/r₀ by −½φ₁ (Lu et al.'s 'dpmsolver' form), so its gap is exactly (−½φ₁ − φ₂)·D1₀.
    coef = np.random.default_rng(order).standard_normal(order)
    g = lambda u: np.polyval(coef, u)  # noqa: E731
    lam = -np.log(SIG)
    a, b = S.dpm_solver_pp_coefficients(SIG, order=order, lower_order_final=False, exact_third_order=exact3)
    for i in range(order - 1, len(SIG) - 1):
        exact = SIG[i + 1] * integrate.quad(lambda u: np.exp(u) * g(u), lam[i], lam[i + 1], epsabs=0,
                                            epsrel=1e-13)[0]
        got = sum(b[i, k] * g(lam[i - k]) for k in range(order))
        if order == 2:
            h = lam[i + 1] - lam[i]
            phi1 = np.expm1(-h)
            d1 = (g(lam[i]) - g(lam[i - 1])) / ((lam[i] - lam[i - 1]) / h)
            exact = exact + (-0.5 * phi1 - (phi1 / h + 1)) * d1
        np.testing.assert_allclose(got, exact, rtol=1e-10, atol=1e-12)


def test_canonical_3m_halves_the_third_order_term():
    # Canonical 3M minus the exact-on-quadratics step is −φ₃·D2 with D2 = (D1₀ − D1₁)/(r₀ + r₁) (= h²D''/2).
    lam = -np.log(SIG)
    _, b_can = S.dpm_solver_pp_coefficients(SIG, order=3, lower_order_final=False)
    _, b_fix = S.dpm_solver_pp_coefficients(SIG, order=3, lower_order_final=False, exact_third_order=True)
    g = lambda u: 0.7 * u ** 2 - 0.2 * u + 1.0  # noqa: E731
    for i in range(2, len(SIG) - 1):
        h, h0, h1 = lam[i + 1] - lam[i], lam[i] - lam[i - 1], lam[i - 1] - lam[i - 2]
        r0, r1 = h0 / h, h1 / h
        d2 = ((g(lam[i]) - g(lam[i - 1])) / r0 - (g(lam[i - 1]) - g(lam[i - 2])) / r1) / (r0 + r1)
        np.testing.assert_allclose(d2, 0.7 * h ** 2, rtol=1e-12)  # = h²g''/2 with g'' = 1.4
        phi3 = (np.expm1(-h) / h + 1) / h - 0.5
        gap = sum((b_can[i, k] - b_fix[i, k]) * g(lam[i - k]) for k in range(3))
        np.testing.assert_allclose(gap, phi3 * d2, rtol=1e-10)


def test_ipndm_coefficients_and_first_steps():
    a, b = S.ipndm_coefficients(SIG, max_order=4)
    dlt = np.diff(SIG)
    np.testing.assert_array_equal(a, 1.0)
    np.testing.assert_allclose(b[0], dlt[0] * np.array([1, 0, 0, 0]), rtol=1e-15)
    np.testing.assert_allclose(b[1], dlt[1] * np.array([1.5, -0.5, 0, 0]), rtol=1e-15)
    np.testing.assert_allclose(b[2], dlt[2] * np.array([23, -16, 5, 0]) / 12, rtol=1e-15)
    np.testing.assert_allclose(b[4], dlt[4] * np.array([55, -59, 37, -9]) / 24, rtol=1e-15)
    with jax.enable_x64(True):
        v = {s: c for s, c in zip(SIG[:2], (0.7, -0.4))}
        # D(x, σ) = x − σ·v(σ) makes the slope d = v(σ) independent of x.
        den = lambda x, s: x - s * jnp.select([s == k for k in v], list(v.values()))  # noqa: E731
        x0 = jnp.asarray(np.random.default_rng(1).standard_normal((2, 3)))
        want = x0 + dlt[0] * v[SIG[0]] + dlt[1] * (3 * v[SIG[1]] - v[SIG[0]]) / 2
        np.testing.assert_allclose(S.sample_ipndm(den, x0, SIG[:3]), want, rtol=1e-14)


@pytest.mark.parametrize("order", [1, 2, 3, 4])
def test_deis_rho_ab_exact_on_polynomials_in_sigma(order):
    coef = np.random.default_rng(order).standard_normal(order)
    a, b = S.deis_coefficients(SIG, order=order, interpolation="sigma")
    for i in range(order - 1, len(SIG) - 1):
        exact = np.polyval(np.polyint(coef), SIG[i + 1]) - np.polyval(np.polyint(coef), SIG[i])
        got = sum(b[i, k] * np.polyval(coef, SIG[i - k]) for k in range(order))
        np.testing.assert_allclose(got, exact, rtol=1e-11)


def test_unipc_order1_corrector_is_trapezoid_in_lambda():
    # UniC-1 with B(h) = −h ('bh1'): ρ = ½, x = x̃ − B(h)·½·(D_{i+1} − D_i).
    a, bp, bc = S.unipc_coefficients(SIG[:3], order=1, variant="bh1", lower_order_final=False)
    h = np.log(SIG[0] / SIG[1])
    np.testing.assert_allclose(bp[0, 0], -np.expm1(-h), rtol=1e-15)
    np.testing.assert_allclose(bc[0, :2], [0.5 * h, -np.expm1(-h) - 0.5 * h], rtol=1e-14)

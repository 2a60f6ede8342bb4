"""DeepNorm: coefficients equal the paper's table and Su's optimiser-aware versions; the init scales only
the FFN, value and output kernels; the residual is LN(αx + G(x))."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from kexue_jax.attention import (TransformerBlock, deepnorm_coefficients, deepnorm_init, deepnorm_residual,
                                 deepnorm_scale_params, layer_norm)


def test_coefficients_equal_the_table():
    a, b = deepnorm_coefficients(num_encoder_layers=6)
    assert round(a, 4) == 1.8612 and round(b, 4) == 0.3799  # 12^{1/4}, 48^{-1/4}
    np.testing.assert_allclose(deepnorm_coefficients(num_decoder_layers=18), (36 ** 0.25, 144 ** -0.25), rtol=1e-12)
    n, m = 12, 6
    np.testing.assert_allclose(deepnorm_coefficients(num_encoder_layers=n, num_decoder_layers=m, stack="encoder"),
                               (0.81 * (n ** 4 * m) ** (1 / 16), 0.87 * (n ** 4 * m) ** (-1 / 16)), rtol=1e-12)
    np.testing.assert_allclose(deepnorm_coefficients(num_encoder_layers=n, num_decoder_layers=m, stack="decoder"),
                               ((3 * m) ** 0.25, (12 * m) ** -0.25), rtol=1e-12)
    # Su (8978): SGD needs β/α ∝ 1/√(2N); the paper's table uses 1/√(4N)
    a, b = deepnorm_coefficients(num_encoder_layers=24)
    np.testing.assert_allclose(b / a, 1 / np.sqrt(4 * 24), rtol=1e-12)
    np.testing.assert_allclose(deepnorm_coefficients(num_encoder_layers=24, optimizer="adam"),
                               (48 ** 0.5, 48 ** -0.5), rtol=1e-12)
    np.testing.assert_allclose(deepnorm_coefficients(num_encoder_layers=24, optimizer="lamb"),
                               (1.0, 48 ** -0.5), rtol=1e-12)


def test_init_scales_only_ffn_value_and_out_kernels():
    block = nnx.jit(lambda: TransformerBlock(8, 2, 16, norm="layer", use_bias=True, rngs=nnx.Rngs(0)))()
    before = jax.tree.map(np.asarray, nnx.state(block, nnx.Param))
    beta = deepnorm_coefficients(num_encoder_layers=6).beta
    deepnorm_init(block, beta)
    after = nnx.state(block, nnx.Param)
    scaled = set()
    for (path, old), (_, new) in zip(jax.tree_util.tree_leaves_with_path(before),
                                     jax.tree_util.tree_leaves_with_path(after)):
        names = [str(p.key) for p in path if isinstance(p, jax.tree_util.DictKey)]
        if names[-1] == "kernel" and names[-2] in ("value", "out", "ffn_in", "ffn_out"):
            np.testing.assert_array_equal(new, (old * np.float32(beta)).astype(old.dtype))
            scaled.add(names[-2])
        else:  # query/key kernels and every bias are untouched
            np.testing.assert_array_equal(new, old)
    assert scaled == {"value", "out", "ffn_in", "ffn_out"}


def test_residual_is_layer_norm_of_alpha_x_plus_branch():
    rng = np.random.default_rng(0)
    x, g = (jnp.asarray(rng.normal(size=(2, 3, 8)), jnp.float32) for _ in range(2))
    alpha = deepnorm_coefficients(num_encoder_layers=6).alpha
    y = np.asarray(alpha * np.asarray(x, np.float64) + np.asarray(g, np.float64))
    ref = (y - y.mean(-1, keepdims=True)) / np.sqrt(y.var(-1, keepdims=True) + 1e-5)

    @nnx.jit
    def run(x, g):  # init and forward passes in one compilation
        # a DeepNorm block is that residual twice (attention, then FFN), with no learned norm parameters
        block = TransformerBlock(8, 2, 16, norm="layer", identity_scale=alpha, rope=None, rngs=nnx.Rngs(1))
        h = deepnorm_residual(x, block.attention(x), alpha=alpha)
        return deepnorm_residual(x, g, alpha=alpha), block(x), deepnorm_residual(h, block.ffn(h), alpha=alpha)

    residual, out, composed = run(x, g)
    np.testing.assert_allclose(residual, ref, atol=1e-5)
    np.testing.assert_allclose(out, composed, atol=1e-5)


def test_pure_scaling_works_on_any_pytree():
    params = {"attention": {"query": {"kernel": jnp.ones(2)}, "value": {"kernel": jnp.ones(2), "bias": jnp.ones(2)}}}
    out = deepnorm_scale_params(params, 0.5)
    np.testing.assert_array_equal(out["attention"]["value"]["kernel"], 0.5)
    np.testing.assert_array_equal(out["attention"]["value"]["bias"], 1.0)
    np.testing.assert_array_equal(out["attention"]["query"]["kernel"], 1.0)


@pytest.mark.parametrize("kwargs, match", [
    (dict(), r"`num_encoder_layers` or `num_decoder_layers` must be positive"),
    (dict(num_encoder_layers=-1), r"`num_encoder_layers` must be a non-negative int; got -1"),
    (dict(num_encoder_layers=6, optimizer="rmsprop"), r"`optimizer` must be one of \('sgd', 'adam', 'lamb'\)"),
    (dict(num_encoder_layers=6, num_decoder_layers=6), r"`stack` must be 'encoder' or 'decoder'"),
    (dict(num_encoder_layers=6, num_decoder_layers=6, stack="encoder", optimizer="adam"), r"`optimizer` must be 'sgd'"),
    (dict(num_encoder_layers=6, stack="encoder"), r"`stack` must be None for a single stack"),
])
def test_bad_inputs(kwargs, match):
    with pytest.raises(ValueError, match=match):
        deepnorm_coefficients(**kwargs)


def test_bad_beta_and_shapes():
    with pytest.raises(ValueError, match=r"`beta` must be > 0; got 0"):
        deepnorm_scale_params({"value": {"kernel": jnp.ones(2)}}, 0)
    with pytest.raises(ValueError, match=r"`branch_out` must have the shape of x"):
        deepnorm_residual(jnp.ones((2, 3)), jnp.ones((2, 4)), alpha=1.0)

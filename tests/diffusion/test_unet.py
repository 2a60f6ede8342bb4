"""The author's simplified U-Net: skip-stack structure, time conditioning that can fail, bad inputs."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from kexue_jax.nn.unet import UNet, article_unet_kwargs

SMALL = dict(image_size=8, embedding_size=16, channel_multipliers=(1, 2), blocks=1, min_pixel=2, num_groups=4,
             num_embeddings=11)


apply = nnx.jit(lambda m, x, t: m(x, t))


def make(**kwargs):
    """A U-Net with NumPy-random weights: the random initialisers take ~20 s of XLA:CPU compilation (threefry
    per parameter), and initialisation is not what these tests check."""
    graphdef, state = nnx.split(nnx.eval_shape(lambda: UNet(**{**SMALL, **kwargs}, rngs=nnx.Rngs(0))))
    rng = np.random.default_rng(0)
    state = jax.tree.map(lambda a: jnp.asarray(rng.normal(size=a.shape) * 0.3, a.dtype), state)
    return nnx.merge(graphdef, state)


def test_structure_and_shapes():
    m = make()
    assert m.pools == (True, True)  # 8 -> 4 -> 2
    x = jax.random.normal(jax.random.key(0), (3, 8, 8, 1))
    out, feats = nnx.jit(lambda m, x, t: m(x, t, return_features=True))(m, x, jnp.array([1, 5, 10]))
    assert out.shape == x.shape and feats.shape == (3, 32)
    # The article's sizes at 32×32: pools 32 -> 16 -> 8 -> 4, then stops (min_pixel = 4).
    big = nnx.eval_shape(lambda: UNet(image_size=32, in_channels=3, **article_unet_kwargs(), rngs=nnx.Rngs(0)))
    assert big.pools == (True, True, True, False, False, False)
    assert len(big.down) == 6 and all(len(level) == 2 for level in big.up)


def test_output_depends_on_t_through_the_learned_table_only():
    m = make()
    x = jax.random.normal(jax.random.key(1), (2, 8, 8, 1))
    a, b = apply(m, x, jnp.array([3, 3])), apply(m, x, jnp.array([3, 4]))
    np.testing.assert_allclose(np.asarray(a[0]), np.asarray(b[0]), rtol=1e-6)  # per-example conditioning
    assert float(jnp.max(jnp.abs(a[1] - b[1]))) > 1e-3
    # Gradient w.r.t. the table is non-zero exactly on the rows that were looked up.
    g = nnx.jit(nnx.grad(lambda mod: jnp.sum(mod(x, jnp.array([2, 7])) ** 2)))(m)
    rows = np.abs(np.asarray(g.embed.embedding[...])).sum(axis=1)
    assert set(np.nonzero(rows)[0]) == {2, 7}


def test_sinusoidal_embedding_is_continuous_in_the_noise_label():
    m = make(time_embedding="sinusoidal")
    x = jax.random.normal(jax.random.key(2), (1, 8, 8, 1))
    f = lambda c: apply(m, x, jnp.array([c]))
    far = float(jnp.max(jnp.abs(f(-1.0) - f(1.0))))
    near = float(jnp.max(jnp.abs(f(0.3) - f(0.3 + 1e-4))))
    assert far > 1e-3 and near < 1e-2 * far


BAD = [
    (dict(min_pixel=1, image_size=6), "`min_pixel` must stop pooling before an odd size"),
    (dict(num_groups=3), "`num_groups` must divide every width [16, 32]; got 3"),
    (dict(time_embedding="fourier"), "`time_embedding` must be one of ['learned', 'sinusoidal']; got 'fourier'"),
    (dict(channel_multipliers=()), "`channel_multipliers` must be a non-empty sequence of positive ints"),
    (dict(blocks=0), "`blocks` must be a positive int; got 0"),
]


@pytest.mark.parametrize("kwargs,message", BAD, ids=[m[:30] for _, m in BAD])
def test_bad_inputs(kwargs, message):
    with pytest.raises(ValueError) as e:
        UNet(**{**SMALL, **kwargs}, rngs=nnx.Rngs(0))
    assert message in str(e.value)


def test_bad_input_shape():
    m = make()
    with pytest.raises(ValueError, match=r"`x` must have shape \[b, 8, 8, 1\]; got \(2, 8, 8, 3\)"):
        m(jnp.zeros((2, 8, 8, 3)), jnp.zeros(2, jnp.int32))

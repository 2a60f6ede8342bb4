"""The author's simplified U-Net: skip-stack structure, time conditioning that can fail, bad inputs."""
import math

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


# ----------------------------------------------------------------------------------- NumPy reference
# An independent float64 forward pass written from the structure in unet.py's docstring (the author's
# ddpm.py), run with the module's own weights: catches a dropped or misplaced skip, the time embedding added
# in the wrong place, a missing activation or norm, max instead of average pooling, and the wrong features.


def _np_conv3(x, k):
    """3×3 'SAME' cross-correlation, no bias: x [b, h, w, ci], k [3, 3, ci, co]."""
    b, h, w, _ = x.shape
    xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    out = np.zeros((b, h, w, k.shape[-1]))
    for di in range(3):
        for dj in range(3):
            out += xp[:, di:di + h, dj:dj + w, :] @ k[di, dj]
    return out


def _np_group_norm(x, scale, bias, groups, eps=1e-6):
    b, h, w, c = x.shape
    g = x.reshape(b, h, w, groups, c // groups)  # contiguous channel groups, as flax's GroupNorm
    mean = g.mean(axis=(1, 2, 4), keepdims=True)
    var = ((g - mean) ** 2).mean(axis=(1, 2, 4), keepdims=True)
    return ((g - mean) / np.sqrt(var + eps)).reshape(x.shape) * scale + bias


def _np_swish(x):
    return x / (1.0 + np.exp(-x))


def _w(p):
    return np.asarray(p[...], np.float64)


def _np_block(blk, x, emb, groups):
    """x + Dense(emb) → conv swish → conv swish, plus x (projected if the width changes), then GroupNorm."""
    h = x + (emb @ _w(blk.time.kernel))[:, None, None, :]
    h = _np_swish(_np_conv3(h, _w(blk.conv1.kernel)))
    h = _np_swish(_np_conv3(h, _w(blk.conv2.kernel)))
    skip = x if blk.proj is None else x @ _w(blk.proj.kernel)
    return _np_group_norm(h + skip, _w(blk.norm.scale), _w(blk.norm.bias), groups)


def _np_unet(m, x, t, *, min_pixel, groups, sinusoidal=False):
    x = np.asarray(x, np.float64)
    if sinusoidal:
        e = m.stem.out_features
        freqs = np.exp(np.linspace(0.0, math.log(100.0), e // 2))
        arg = np.asarray(t, np.float64)[:, None] * freqs[None, :]
        feats = np.concatenate([np.cos(arg), np.sin(arg)], axis=-1)
        l0, l1 = m.time_mlp[0], m.time_mlp[1]
        hid = _np_swish(feats @ _w(l0.kernel) + _w(l0.bias))
        emb = hid @ _w(l1.kernel) + _w(l1.bias)
    else:
        emb = _w(m.embed.embedding)[np.asarray(t)]
    h = _np_conv3(x, _w(m.stem.kernel))
    stack, pooled = [h], []
    for level in m.down:
        for blk in level:
            h = _np_block(blk, h, emb, groups)
            stack.append(h)
        if h.shape[1] > min_pixel:  # 2×2 average pooling while the size exceeds min_pixel
            b, s, _, c = h.shape
            h = h.reshape(b, s // 2, 2, s // 2, 2, c).mean(axis=(2, 4))
            stack.append(h)
            pooled.append(True)
        else:
            pooled.append(False)
    h = _np_block(m.middle, h, emb, groups)
    features = h.mean(axis=(1, 2))
    stack.pop()  # the last pushed tensor is dropped
    for level, did_pool in zip(m.up, reversed(pooled)):
        if did_pool:  # nearest ×2 upsampling, then add the popped skip
            h = h.repeat(2, axis=1).repeat(2, axis=2) + stack.pop()
        for blk in level:
            s = stack.pop()
            h = _np_block(blk, h, emb, groups) + s
    assert not stack  # every pushed skip consumed exactly once
    out = _np_conv3(_np_group_norm(h, _w(m.out_norm.scale), _w(m.out_norm.bias), groups), _w(m.out_conv.kernel))
    return out, features


@pytest.mark.parametrize("kwargs", [
    dict(),  # pools at both levels (8 -> 4 -> 2)
    dict(channel_multipliers=(1, 2, 2), blocks=2, min_pixel=4),  # levels 2 and 3 do not pool
    dict(time_embedding="sinusoidal"),
], ids=["pooling", "non-pooling-levels", "sinusoidal"])
def test_forward_pass_equals_numpy_reference(kwargs):
    m = make(**kwargs)
    x = np.random.default_rng(5).normal(size=(2, 8, 8, 1)).astype(np.float32)
    sinusoidal = kwargs.get("time_embedding") == "sinusoidal"
    t = np.array([-0.9, 0.4], np.float32) if sinusoidal else np.array([1, 7])
    out, feats = nnx.jit(lambda m, x, t: m(x, t, return_features=True))(m, jnp.asarray(x), jnp.asarray(t))
    ref_out, ref_feats = _np_unet(m, x, t, min_pixel=kwargs.get("min_pixel", SMALL["min_pixel"]),
                                  groups=SMALL["num_groups"], sinusoidal=sinusoidal)
    assert m.pools == ((True, False, False) if "min_pixel" in kwargs else (True, True))
    scale = np.abs(ref_out).max()
    assert scale > 0.1  # a non-trivial output to compare
    np.testing.assert_allclose(np.asarray(out), ref_out, rtol=0, atol=1e-4 * scale)
    np.testing.assert_allclose(np.asarray(feats), ref_feats, rtol=0, atol=1e-4 * np.abs(ref_feats).max())


def test_initialiser_variances():
    """variance_scaling(scale, fan_avg, uniform): Var = scale·2/(fan_in + fan_out), with scale = 1/√num_layers
    (num_layers = 2·levels + 1) on the residual blocks' convs, as the author's VarianceScaling(1 / num_layers**0.5,
    'fan_avg', 'uniform'), and 1 on the stem, the output conv and the dense layers."""
    m = nnx.jit(lambda: UNet(**SMALL, rngs=nnx.Rngs(0)))()
    num_layers = 2 * len(SMALL["channel_multipliers"]) + 1
    convs = [blk.conv1 for lvl in list(m.down) + list(m.up) for blk in lvl] + [m.middle.conv1, m.middle.conv2]
    convs += [blk.conv2 for lvl in list(m.down) + list(m.up) for blk in lvl]
    ratios = []
    for conv in convs:
        k = _w(conv.kernel)
        fan_in, fan_out = 9 * k.shape[2], 9 * k.shape[3]
        ratios.append((np.sum(k ** 2), k.size * 2 / (fan_in + fan_out) / math.sqrt(num_layers)))
    got, want = map(sum, zip(*ratios))
    assert got / want == pytest.approx(1.0, abs=0.05)  # ~30k weights: s.e. of the ratio ≈ 0.5%
    for conv in (m.stem, m.out_conv):
        k = _w(conv.kernel)
        want = 2 / (9 * k.shape[2] + 9 * k.shape[3])
        assert np.mean(k ** 2) / want == pytest.approx(1.0, abs=0.25)  # 144 weights each: s.e. ≈ 7%
    time = np.concatenate([_w(blk.time.kernel).ravel() / np.sqrt(2 / sum(_w(blk.time.kernel).shape))
                           for lvl in m.down for blk in lvl])
    assert np.mean(time ** 2) == pytest.approx(1.0, abs=0.1)

"""RoFormerV2: exact parameter counts (eval_shape), no bias/scale/offset leaves, the init std, the
forward pass against a float64 NumPy transcription of spec §9.1, α = 0 gives Norm(x), and UNILM source
invariance through the whole model."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from scipy import stats

from kexue_jax.attention import (RoFormerV2, RoFormerV2Config, combine_masks, rms_norm, roformer_v2_base,
                                 roformer_v2_initializer, roformer_v2_large, roformer_v2_num_params,
                                 roformer_v2_small, unilm_mask)
from kexue_jax.attention.roformer import TRUNCATED_NORMAL_STD_CORRECTION


def _leaves(model):
    return jax.tree_util.tree_leaves_with_path(nnx.state(model, nnx.Param))


@pytest.mark.parametrize("make, expected", [(roformer_v2_small, 15_225_600), (roformer_v2_base, 94_152_192),
                                            (roformer_v2_large, 314_279_936)])
def test_parameter_counts_and_no_bias_or_norm_parameters(make, expected):
    config = make()
    abstract = nnx.eval_shape(lambda: RoFormerV2(config, rngs=nnx.Rngs(0)))
    leaves = _leaves(abstract)
    assert sum(int(np.prod(leaf.shape)) for _, leaf in leaves) == expected == roformer_v2_num_params(config)
    names = {str(p.key) for path, _ in leaves for p in path if isinstance(p, jax.tree_util.DictKey)}
    assert not names & {"bias", "scale", "offset", "gamma", "beta"}
    assert {str(p.key) for path, _ in leaves for p in path[-2:-1]} <= {"kernel", "embedding"}


def test_init_std_is_one_over_sqrt_fan_over_sqrt_depth():
    np.testing.assert_allclose(1 / stats.truncnorm(-2, 2).std(), TRUNCATED_NORMAL_STD_CORRECTION, rtol=1e-8)
    config = RoFormerV2Config(vocab_size=12000, hidden_size=64, num_layers=3, num_heads=2, intermediate_size=256)
    model = nnx.jit(lambda: RoFormerV2(config, rngs=nnx.Rngs(0)))()  # one compiled init
    depth = config.num_layers ** -0.5
    checks = {"token_embedding": 64, "segment_embedding": 64}  # tables: fan = shape[1]
    for path, leaf in _leaves(model):
        names = [str(p.key) for p in path if isinstance(p, jax.tree_util.DictKey)]
        fan = checks.get(names[0], leaf.shape[0])  # kernels [in, out]: fan = in
        std = 1 / np.sqrt(fan) * depth
        leaf = np.asarray(leaf)
        if leaf.size >= 4096:
            np.testing.assert_allclose(leaf.std(), std, rtol=0.04, err_msg="/".join(names))
        assert np.abs(leaf).max() <= 2 * TRUNCATED_NORMAL_STD_CORRECTION * std * (1 + 1e-6)
    init = roformer_v2_initializer(4)
    assert init(jax.random.key(0), (5, 32)).std() < 1.3 / np.sqrt(32) * 0.5  # shape[0] < 10: fan = shape[1]


@functools.lru_cache(maxsize=None)
def _tiny(seed=0):
    """A 2-layer model, built once per seed for the whole module (no test mutates it)."""
    config = RoFormerV2Config(vocab_size=40, hidden_size=16, num_layers=2, num_heads=2, intermediate_size=24,
                              dropout_rate=0.0)
    return nnx.jit(lambda: RoFormerV2(config, rngs=nnx.Rngs(seed)))()  # one compiled init


def _reference(model, ids, segs, extra_mask=None):
    """Spec §9.1 in float64 NumPy, reading the model's weights."""
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), nnx.to_pure_dict(nnx.state(model, nnx.Param)))
    cfg = model.config
    rms = lambda x: x / np.sqrt(np.mean(x * x, -1, keepdims=True) + cfg.norm_eps)
    b, t = ids.shape
    nh, hd = cfg.num_heads, cfg.hidden_size // cfg.num_heads
    theta = 10000.0 ** (-np.arange(0, hd, 2) / hd)
    ang = np.arange(t)[:, None] * theta[None, :]
    cos, sin = np.repeat(np.cos(ang), 2, -1)[None, :, None], np.repeat(np.sin(ang), 2, -1)[None, :, None]
    rope = lambda x: x * cos + np.stack([-x[..., 1::2], x[..., ::2]], -1).reshape(x.shape) * sin
    mask = np.broadcast_to(np.asarray(ids)[:, None, :] != 0, (b, t, t))
    if extra_mask is not None:
        mask = mask & np.asarray(extra_mask)
    x = rms(p["token_embedding"]["embedding"][ids] + p["segment_embedding"]["embedding"][segs])
    for layer in p["layers"].values():
        att = layer["attention"]
        q, k, v = (rope((x @ att[n]["kernel"]).reshape(b, t, nh, hd)) if n != "value" else
                   (x @ att[n]["kernel"]).reshape(b, t, nh, hd) for n in ("query", "key", "value"))
        logits = np.einsum("bthk,bshk->bhts", q, k) / np.sqrt(hd)
        logits = np.where(mask[:, None], logits, -np.inf)
        w = np.exp(logits - logits.max(-1, keepdims=True))
        o = np.einsum("bhts,bshk->bthk", w / w.sum(-1, keepdims=True), v).reshape(b, t, -1)
        x = rms(x + o @ att["out"]["kernel"])
        x = rms(x + np.maximum(x @ layer["ffn"]["ffn_in"]["kernel"], 0) @ layer["ffn"]["ffn_out"]["kernel"])
    return x, x @ p["token_embedding"]["embedding"].T


def test_forward_matches_float64_transcription_of_the_spec():
    model = _tiny()
    ids = jnp.array([[5, 7, 9, 11, 0, 0], [3, 4, 5, 6, 7, 8]])
    segs = jnp.array([[0, 0, 1, 1, 0, 0], [0, 0, 0, 1, 1, 1]])

    @nnx.jit
    def run(model, ids, segs):  # both forward passes in one compilation
        hidden = model(ids, segs, deterministic=True)
        um = unilm_mask(segs)  # a UNILM mask on top of the padding mask
        return hidden, model.mlm_logits(hidden), model(ids, segs, mask=um, deterministic=True), um

    hidden, logits, hidden_unilm, um = run(model, ids, segs)
    ref_hidden, ref_logits = _reference(model, np.asarray(ids), np.asarray(segs))
    valid = np.asarray(ids) != 0
    np.testing.assert_allclose(np.asarray(hidden)[valid], ref_hidden[valid], atol=2e-5)
    np.testing.assert_allclose(np.asarray(logits)[valid], ref_logits[valid], atol=1e-4)
    np.testing.assert_allclose(np.asarray(hidden_unilm)[valid], _reference(model, np.asarray(ids), np.asarray(segs),
                                                                           um)[0][valid], atol=2e-5)


def test_deterministic_call_disables_every_dropout_and_the_configured_eps_reaches_every_norm():
    # ε = 0.5 is comparable to mean(x²) of the embeddings and hidden states, so any norm left at the default
    # 1e-7 moves the output far beyond the tolerance; dropout 0.3 must vanish when deterministic=True.
    config = RoFormerV2Config(vocab_size=40, hidden_size=16, num_layers=2, num_heads=2, intermediate_size=24,
                              dropout_rate=0.3, norm_eps=0.5)
    ids = jnp.array([[5, 7, 9, 11, 0, 0], [3, 4, 5, 6, 7, 8]])
    segs = jnp.array([[0, 0, 1, 1, 0, 0], [0, 0, 0, 1, 1, 1]])

    @nnx.jit
    def run(ids, segs):  # init and both forward passes in one compilation
        model = RoFormerV2(config, rngs=nnx.Rngs(1))
        return model, model(ids, segs, deterministic=True), model(ids, segs, deterministic=False)

    model, evaluated, trained = run(ids, segs)
    ref = _reference(model, np.asarray(ids), np.asarray(segs))[0]
    valid = np.asarray(ids) != 0
    np.testing.assert_allclose(np.asarray(evaluated)[valid], ref[valid], atol=2e-5)
    assert np.abs(np.asarray(trained)[valid] - ref[valid]).max() > 1e-2  # dropout is active in training


def test_alpha_zero_gives_the_norm_of_the_embeddings():
    model = _tiny()
    ids = jnp.array([[5, 7, 9, 11]])

    @nnx.jit
    def run(model, ids):
        emb = model.token_embedding(ids) + model.segment_embedding(jnp.zeros_like(ids))
        composed = rms_norm(emb)
        for _ in range(2 * model.config.num_layers):  # each post-norm sublayer is Norm(x + 0·F(x)) = Norm(x)
            composed = rms_norm(composed)
        return model(ids, alpha=0.0), composed, rms_norm(emb), model(ids, alpha=1.0)

    out, composed, norm_emb, out_alpha1 = run(model, ids)
    np.testing.assert_allclose(out, composed, atol=1e-6)
    # Norm is idempotent up to ε and float32 rounding of 2L + 1 normalisations (~10 ulps each)
    np.testing.assert_allclose(out, norm_emb, atol=1e-5)
    assert np.abs(out_alpha1 - norm_emb).max() > 1e-2


def test_perturbing_a_target_token_leaves_source_states_exactly_unchanged():
    model = _tiny()
    segs = jnp.array([[0, 0, 0, 1, 1, 1]])
    ids = jnp.array([[5, 6, 7, 8, 9, 10]])
    mask = combine_masks(unilm_mask(segs))
    a, b = nnx.jit(lambda model, ids, ids2: (model(ids, segs, mask=mask), model(ids2, segs, mask=mask)))(
        model, ids, ids.at[0, 5].set(30))
    np.testing.assert_array_equal(a[0, :5], b[0, :5])
    assert np.abs(a[0, 5] - b[0, 5]).max() > 1e-3


@pytest.mark.parametrize("kwargs, match", [
    (dict(hidden_size=0), r"`hidden_size` must be a positive int; got 0"),
    (dict(hidden_size=30, num_heads=4), r"`num_heads` must divide hidden_size=30"),
    (dict(hidden_size=12, num_heads=4), r"`num_heads` must divide hidden_size=12 into even head dims"),
    (dict(dropout_rate=1.0), r"`dropout_rate` must be in \[0, 1\)"),
])
def test_bad_configs(kwargs, match):
    with pytest.raises(ValueError, match=match):
        RoFormerV2Config(**kwargs)


def test_bad_call_inputs():
    model = _tiny()
    with pytest.raises(ValueError, match=r"`token_ids` must be an integer array \[b, t\]"):
        model(jnp.ones((2, 3)))
    with pytest.raises(ValueError, match=r"`segment_ids` must have shape \(1, 3\)"):
        model(jnp.ones((1, 3), int), jnp.zeros((1, 4), int))
    with pytest.raises(ValueError, match=r"`config` must be a RoFormerV2Config"):
        nnx.eval_shape(lambda: RoFormerV2(dict(), rngs=nnx.Rngs(0)))

"""The blog author's simplified U-Net for DDPM: additive skips, GroupNorm, learned time embedding, no attention.

Structure (bojone/Keras-DDPM ddpm.py, read to understand; written anew here):
  x -> 3×3 conv to E channels (E = embedding_size)
  down: for each level ℓ with multiplier m_ℓ: `blocks` residual blocks to m_ℓ·E channels, each output pushed on
        a skip stack; then 2×2 average pooling (also pushed) while the spatial size is > `min_pixel`
  middle: one residual block; the last pushed tensor is dropped
  up: for the levels in reverse: if that level pooled, nearest ×2 upsampling then ADD the popped skip;
      then `blocks` times: pop a skip s, residual block to s's channels, ADD s
  out: GroupNorm -> 3×3 conv to the data channels.
Residual block(x, t): x + Dense(emb(t)) (broadcast over space) -> conv3×3 swish -> conv3×3 swish, plus the input
(through a 1×1 projection if the width changes), then GroupNorm. Convs and dense layers have no bias and a
variance-scaling (fan_avg, uniform) initialiser; the block convs use scale 1/√num_layers (num_layers =
2·levels + 1) so the residual stack starts near the identity.

Time: 'learned' is the author's trainable table (t an integer index, T + 1 rows for the article's
t = 1..T); 'sinusoidal' takes a float noise label (EDM's c_noise = ¼ ln σ) through sin/cos features and a
2-layer MLP, for continuous-σ denoisers. Sizes: the article uses E = 128, multipliers (1, 1, 2, 2, 4, 4),
blocks = 2, min_pixel = 4 (128×128 faces); `article_unet_kwargs()` gives them, and the configs scale them
down for 8×8 and 28×28 digits.

References:
  https://kexue.fm/archives/9152 ; Ho et al. 2020 (arXiv:2006.11239), Appendix B (the U-Net this simplifies);
  Karras et al. 2022 (arXiv:2206.00364) for the c_noise input.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

__all__ = ["UNet", "ResidualBlock", "TIME_EMBEDDINGS", "article_unet_kwargs"]

TIME_EMBEDDINGS = ("learned", "sinusoidal")


def article_unet_kwargs() -> dict:
    """The sizes of the author's ddpm.py (E = 128, multipliers (1, 1, 2, 2, 4, 4), 2 blocks, min_pixel 4)."""
    return dict(embedding_size=128, channel_multipliers=(1, 1, 2, 2, 4, 4), blocks=2, min_pixel=4, num_groups=32)


def _init(scale: float):
    return jax.nn.initializers.variance_scaling(max(scale, 1e-10), "fan_avg", "uniform")


def _conv(cin: int, cout: int, scale: float, rngs: nnx.Rngs) -> nnx.Conv:
    return nnx.Conv(cin, cout, kernel_size=(3, 3), padding="SAME", use_bias=False, kernel_init=_init(scale),
                    rngs=rngs)


def _dense(cin: int, cout: int, rngs: nnx.Rngs) -> nnx.Linear:
    return nnx.Linear(cin, cout, use_bias=False, kernel_init=_init(1.0), rngs=rngs)


class ResidualBlock(nnx.Module):
    """GroupNorm(conv(swish)(conv(swish)(x + Dense(t))) + proj(x)), the author's `residual_block`."""

    def __init__(self, cin: int, cout: int, embedding_size: int, *, init_scale: float, num_groups: int,
                 rngs: nnx.Rngs):
        self.time = _dense(embedding_size, cin, rngs)
        self.conv1 = _conv(cin, cout, init_scale, rngs)
        self.conv2 = _conv(cout, cout, init_scale, rngs)
        self.proj = _dense(cin, cout, rngs) if cin != cout else None
        self.norm = nnx.GroupNorm(cout, num_groups=num_groups, epsilon=1e-6, rngs=rngs)

    def __call__(self, x: jax.Array, emb: jax.Array) -> jax.Array:
        skip = x if self.proj is None else self.proj(x)
        h = x + self.time(emb)[:, None, None, :]  # [b, h, w, cin] + [b, 1, 1, cin]
        h = jax.nn.swish(self.conv1(h))
        h = jax.nn.swish(self.conv2(h))
        return self.norm(h + skip)


def _pool(x: jax.Array) -> jax.Array:
    b, h, w, c = x.shape
    return x.reshape(b, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))  # [b, h/2, w/2, c]


def _upsample(x: jax.Array) -> jax.Array:
    return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)  # [b, 2h, 2w, c]


class UNet(nnx.Module):
    """The author's simplified U-Net: `model(x [b, h, w, c], t [b]) -> [b, h, w, c]`.

    Args:
      image_size: spatial size (square images); fixes which levels pool.
      in_channels: data channels (1 for digits, 3 for CIFAR-10); the output has the same count.
      embedding_size: E, the time-embedding width and the base channel count.
      channel_multipliers: per-level widths in units of E.
      blocks: residual blocks per level.
      min_pixel: pool while the spatial size is > min_pixel (every pooled size must be even).
      num_groups: GroupNorm groups; must divide every width.
      time_embedding: 'learned' (t: int indices in [0, num_embeddings)) or 'sinusoidal' (t: float labels).
      num_embeddings: rows of the learned table (T + 1 for the article's t = 1..T).
    """

    def __init__(self, *, image_size: int, in_channels: int = 1, embedding_size: int = 128,
                 channel_multipliers=(1, 1, 2, 2, 4, 4), blocks: int = 2, min_pixel: int = 4, num_groups: int = 32,
                 time_embedding: str = "learned", num_embeddings: int = 1001, rngs: nnx.Rngs):
        for name, v in (("image_size", image_size), ("in_channels", in_channels), ("embedding_size", embedding_size),
                        ("blocks", blocks), ("min_pixel", min_pixel), ("num_groups", num_groups),
                        ("num_embeddings", num_embeddings)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"`{name}` must be a positive int; got {v!r}")
        mults = tuple(channel_multipliers)
        if not mults or any(isinstance(m, bool) or not isinstance(m, int) or m < 1 for m in mults):
            raise ValueError(f"`channel_multipliers` must be a non-empty sequence of positive ints; got {mults!r}")
        if time_embedding not in TIME_EMBEDDINGS:
            raise ValueError(f"`time_embedding` must be one of {list(TIME_EMBEDDINGS)}; got {time_embedding!r}")
        widths = sorted({embedding_size * m for m in mults})
        if any(w % num_groups for w in widths):
            raise ValueError(f"`num_groups` must divide every width {widths}; got {num_groups}")
        size = image_size
        for _ in mults:  # validate the pooling sizes before any parameter is created
            if size > min_pixel:
                if size % 2:
                    raise ValueError(f"`min_pixel` must stop pooling before an odd size (size {size} would be "
                                     f"pooled; use min_pixel >= {size}); got {min_pixel}")
                size //= 2
        e = embedding_size
        self.image_size, self.in_channels, self.time_embedding = image_size, in_channels, time_embedding
        num_layers = len(mults) * 2 + 1
        scale = 1.0 / math.sqrt(num_layers)
        if time_embedding == "learned":
            self.embed = nnx.Embed(num_embeddings, e, rngs=rngs)
            self.time_mlp = None
        else:
            self.embed = None
            self.time_mlp = nnx.List([nnx.Linear(e, e, rngs=rngs), nnx.Linear(e, e, rngs=rngs)])
        self.stem = _conv(in_channels, e, 1.0, rngs)

        # Simulate the skip stack to know each block's widths and which levels pool.
        stack = [e]  # widths of the pushed tensors
        size, width = image_size, e
        down, pools = [], []
        for m in mults:
            level = []
            for _ in range(blocks):
                level.append(ResidualBlock(width, m * e, e, init_scale=scale, num_groups=num_groups, rngs=rngs))
                width = m * e
                stack.append(width)
            down.append(nnx.List(level))
            if size > min_pixel:
                size //= 2
                stack.append(width)
                pools.append(True)
            else:
                pools.append(False)
        self.down = nnx.List(down)
        self.pools = tuple(pools)
        self.middle = ResidualBlock(width, mults[-1] * e, e, init_scale=scale, num_groups=num_groups, rngs=rngs)
        width = mults[-1] * e
        stack.pop()
        up = []
        for pooled in reversed(pools):
            if pooled:
                stack.pop()
            level = []
            for _ in range(blocks):
                target = stack.pop()
                level.append(ResidualBlock(width, target, e, init_scale=scale, num_groups=num_groups, rngs=rngs))
                width = target
            up.append(nnx.List(level))
        self.up = nnx.List(up)
        self.out_norm = nnx.GroupNorm(width, num_groups=num_groups, epsilon=1e-6, rngs=rngs)
        self.out_conv = _conv(width, in_channels, 1.0, rngs)

    def embedding(self, t: jax.Array) -> jax.Array:
        """The time embedding [b, E] of t [b] (int indices or float noise labels)."""
        if self.embed is not None:
            return self.embed(t.astype(jnp.int32))
        e = self.stem.out_features
        half = e // 2
        # Frequencies 1..100 on c_noise = ¼ ln σ ∈ [−1.6, 1.1]: resolves σ ratios of a few percent, stays smooth.
        freqs = jnp.exp(jnp.linspace(0.0, math.log(100.0), half))  # [half]
        arg = t.astype(jnp.float32)[:, None] * freqs[None, :]  # [b, half]
        feats = jnp.concatenate([jnp.cos(arg), jnp.sin(arg)], axis=-1)  # [b, 2·half]
        if feats.shape[-1] < e:
            feats = jnp.pad(feats, ((0, 0), (0, e - feats.shape[-1])))
        return self.time_mlp[1](jax.nn.swish(self.time_mlp[0](feats)))

    def __call__(self, x: jax.Array, t: jax.Array, *, return_features: bool = False):
        """ε (or F) of x [b, h, w, c] at t [b]; with return_features, also the pooled bottleneck [b, C]."""
        if x.ndim != 4 or x.shape[1:] != (self.image_size, self.image_size, self.in_channels):
            raise ValueError(f"`x` must have shape [b, {self.image_size}, {self.image_size}, {self.in_channels}]; "
                             f"got {x.shape}")
        t = jnp.broadcast_to(jnp.asarray(t), x.shape[:1])
        emb = self.embedding(t)
        h = self.stem(x)
        stack = [h]
        for level, pooled in zip(self.down, self.pools):
            for block in level:
                h = block(h, emb)
                stack.append(h)
            if pooled:
                h = _pool(h)
                stack.append(h)
        h = self.middle(h, emb)
        features = h.mean(axis=(1, 2))  # [b, C]
        stack.pop()
        for level, pooled in zip(self.up, reversed(self.pools)):
            if pooled:
                h = _upsample(h) + stack.pop()
            for block in level:
                s = stack.pop()
                h = block(h, emb) + s
        out = self.out_conv(self.out_norm(h))
        return (out, features) if return_features else out

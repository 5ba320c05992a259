"""U-ViT (Bao et al. 2023): every input is a token (label, time, patches); long skips between
shallow and deep blocks; a 3×3 conv after un-patchifying.

The same function as the official `libs/uvit.py` `UViT`, weight for weight (jaxrepro.interop.uvit
maps its state dicts onto this tree), with NHWC images instead of NCHW. Field meanings follow the
official constructor, except `num_classes` (see UViT).
"""
import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxrepro.models.layers import check_labels, drop_labels

# torch defaults of the official layers: LayerNorm eps 1e-5, exact (erf) GELU, Linear weights ~ N(0, 0.02²)
LN_EPS = 1e-5
Dense = functools.partial(nn.Dense, kernel_init=nn.initializers.normal(0.02))
LayerNorm = functools.partial(nn.LayerNorm, epsilon=LN_EPS)


def timestep_embedding(timesteps, dim, max_period=10000):
    """Official U-ViT time embedding [cos(t ω_i), sin(t ω_i)], ω_i = max_period^(−i/half): [B] → [B, dim]."""
    half = dim // 2
    # ω in float32 as torch builds it: exp(−ln(max_period) · i / half)
    omega = np.exp(np.float32(-math.log(max_period)) * np.arange(half, dtype=np.float32) / np.float32(half))
    arg = jnp.asarray(timesteps, jnp.float32).reshape(-1)[:, None] * omega.astype(np.float32)[None]  # [B, half]
    emb = jnp.concatenate([jnp.cos(arg), jnp.sin(arg)], axis=1)          # [B, 2·half]
    if dim % 2:
        emb = jnp.concatenate([emb, jnp.zeros_like(emb[:, :1])], axis=1)
    return emb                                                            # [B, dim]


class Attention(nn.Module):
    """Multi-head self-attention; one fused qkv projection whose outputs are ordered (q|k|v, head, channel)."""
    heads: int
    qkv_bias: bool = False

    @nn.compact
    def __call__(self, x):
        b, l, d = x.shape
        dh = d // self.heads
        qkv = Dense(3 * d, use_bias=self.qkv_bias, name="qkv")(x).reshape(b, l, 3, self.heads, dh)  # [B, L, 3, H, dh]
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]                # [B, L, H, dh]
        logits = jnp.einsum("bqhc,bkhc->bhqk", q, k) * dh ** -0.5         # [B, H, L, L]
        w = jax.nn.softmax(logits, axis=-1)
        o = jnp.einsum("bhqk,bkhc->bqhc", w, v).reshape(b, l, d)          # [B, L, d]
        return Dense(d, name="proj")(o)


class Mlp(nn.Module):
    """Linear → GELU (exact erf form, torch's nn.GELU default) → Linear."""
    hidden: int

    @nn.compact
    def __call__(self, x):
        h = nn.gelu(Dense(self.hidden, name="fc1")(x), approximate=False)  # [B, L, hidden]
        return Dense(x.shape[-1], name="fc2")(h)


class Block(nn.Module):
    """Pre-norm transformer block; with `skip`, the long skip enters through Linear(concat[x, skip]: 2d → d)."""
    heads: int
    mlp_ratio: float = 4.0
    qkv_bias: bool = False
    skip: bool = False

    @nn.compact
    def __call__(self, x, skip=None):
        d = x.shape[-1]
        if self.skip:
            x = Dense(d, name="skip_linear")(jnp.concatenate([x, skip], axis=-1))
        x = x + Attention(self.heads, self.qkv_bias, name="attn")(LayerNorm(name="norm1")(x))
        return x + Mlp(int(d * self.mlp_ratio), name="mlp")(LayerNorm(name="norm2")(x))


class UViT(nn.Module):
    """F(x [B,H,W,C], c_noise [B], labels [B] | None, train, example_ids [B] | None) → [B,H,W,C]; c_noise is the official `timesteps`.

    depth: as the official constructor, depth//2 in-blocks, one mid block, depth//2 out-blocks.
    num_classes: labels 0..num_classes−1 plus the null label num_classes (label dropout / guidance),
      so the label table has num_classes + 1 rows; the official `num_classes` counts that null row.
    Tokens are ordered [label, time, patches] as in the official forward; `extras` = 1 + (num_classes > 0).
    """
    patch_size: int = 2
    embed_dim: int = 512
    depth: int = 12
    num_heads: int = 8
    mlp_ratio: float = 4.0
    qkv_bias: bool = False
    mlp_time_embed: bool = False
    num_classes: int = 0
    label_dropout: float = 0.0
    skip: bool = True      # long skips into the out-blocks
    conv: bool = True      # final 3×3 conv

    @nn.compact
    def __call__(self, x, c_noise, labels=None, train=False, example_ids=None):
        b, hh, ww, c = x.shape
        p, d = self.patch_size, self.embed_dim
        if hh % p or ww % p:
            raise ValueError(f"U-ViT patch size {p} must divide the image size {x.shape[1:3]}")
        if d % self.num_heads:
            raise ValueError(f"U-ViT num_heads {self.num_heads} must divide embed_dim {d}")
        labels = check_labels(labels, b, self.num_classes)
        tokens = nn.Conv(d, (p, p), strides=(p, p), padding="VALID", name="patch_embed")(x)
        tokens = tokens.reshape(b, -1, d)                                 # [B, L, d], patches row-major
        t = timestep_embedding(c_noise, d)                                # [B, d]
        if self.mlp_time_embed:
            t = Dense(d, name="time_embed_2")(nn.silu(Dense(4 * d, name="time_embed_0")(t)))
        extras = [t[:, None]]                                             # [B, 1, d]
        if self.num_classes:
            labels = drop_labels(self, labels, self.label_dropout, self.num_classes, train, example_ids)
            extras.insert(0, nn.Embed(self.num_classes + 1, d, name="label_emb")(labels)[:, None])
        h = jnp.concatenate(extras + [tokens], axis=1)                    # [B, extras + L, d]
        h = h + self.param("pos_embed", nn.initializers.normal(0.02), (1, h.shape[1], d))
        block = functools.partial(Block, self.num_heads, self.mlp_ratio, self.qkv_bias)
        skips = []
        for i in range(self.depth // 2):
            h = block(name=f"in_blocks_{i}")(h)
            skips.append(h)
        h = block(name="mid_block")(h)
        for i in range(self.depth // 2):
            h = block(skip=self.skip, name=f"out_blocks_{i}")(h, skips.pop())
        h = Dense(p * p * c, name="decoder_pred")(LayerNorm(name="norm")(h))[:, len(extras):]  # [B, L, p·p·C]
        # unpatchify: token (i, j) holds its patch as (p1, p2, C)
        h = h.reshape(b, hh // p, ww // p, p, p, c).transpose(0, 1, 3, 2, 4, 5).reshape(b, hh, ww, c)
        if self.conv:
            h = nn.Conv(c, (3, 3), padding=1, name="final_layer")(h)
        return h

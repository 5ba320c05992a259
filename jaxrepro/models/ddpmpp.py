"""DDPM++ UNet following EDM's SongUNet (Karras et al. 2022), in NHWC.

Encoder/decoder of UNetBlocks (GroupNorm → SiLU → 3×3 conv, noise-embedding bias, dropout,
zero-ish init output conv, √0.5 skip scaling, single-head self-attention at chosen
resolutions), positional noise embedding → 2-layer MLP (4C), 2×2 box-filter resampling.
Parameter counts match EDM exactly (tests/test_models.py).
"""
from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from jaxrepro.models.fast_layers import Conv, add_per_example, materialize
from jaxrepro.models.layers import check_labels, drop_labels, dropout, group_norm, positional_embedding

SKIP_SCALE = float(np.sqrt(0.5))    # a Python float: keeps bfloat16 activations bfloat16 (np.float64 promoted)
_init = nn.initializers.xavier_uniform()
_init_zero = nn.initializers.variance_scaling(1e-10, "fan_avg", "uniform")       # xavier × 1e-5
_init_attn = nn.initializers.variance_scaling(0.2, "fan_avg", "uniform")          # xavier × √0.2


def downsample(x):
    """EDM's [1,1] resample filter, stride 2: 2×2 average pooling."""
    return nn.avg_pool(x, (2, 2), (2, 2))


def upsample(x):
    """EDM's [1,1] transposed resample filter, stride 2: nearest-neighbour ×2."""
    return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)


class UNetBlock(nn.Module):
    """SongUNet's UNetBlock (adaptive_scale=False, resample_proj=True)."""
    out_channels: int
    up: bool = False
    down: bool = False
    attention: bool = False
    dropout: float = 0.0

    @nn.compact
    def __call__(self, x, emb, train=False, example_ids=None):
        c_in, c_out = x.shape[-1], self.out_channels
        orig = x
        h = group_norm(c_in, name="norm0", silu=True)(x)
        if self.up:
            h = upsample(h)
        if self.down:
            h = downsample(h)
        h = Conv(c_out, (3, 3), 1, kernel_init=_init, name="conv0")(h)
        h = add_per_example(h, nn.Dense(c_out, kernel_init=_init, name="affine")(emb))
        h = group_norm(c_out, name="norm1", silu=True)(h)
        h = dropout(self, h, self.dropout, train, example_ids)
        h = Conv(c_out, (3, 3), 1, kernel_init=_init_zero, name="conv1")(h)
        if c_out != c_in or self.up or self.down:
            skip = Conv(c_out, (1, 1), kernel_init=_init, name="skip")
            # a 1×1 conv commutes with nearest-neighbour upsampling: run at the input resolution (¼ of the work)
            orig = upsample(skip(orig)) if self.up else skip(downsample(orig) if self.down else orig)
        x = (h + orig) * SKIP_SCALE
        if self.attention:
            x = materialize(x)        # read by norm2 and the residual add (else recomputed in each, both passes)
            b, hh, ww, c = x.shape
            qkv = Conv(3 * c, (1, 1), kernel_init=_init_attn, split=3, name="qkv")  # EDM's channel order (c, 3)
            q, k, v = (t.reshape(b, hh * ww, c) for t in qkv(group_norm(c, name="norm2")(x)))   # [B, HW, C]
            w = nn.softmax(jnp.einsum("bqc,bkc->bqk", q, k / float(np.sqrt(c))), axis=-1)
            a = jnp.einsum("bqk,bkc->bqc", w, v).reshape(b, hh, ww, c)
            x = (Conv(c, (1, 1), kernel_init=_init_zero, name="proj")(a) + x) * SKIP_SCALE
        return materialize(x)


class DDPMpp(nn.Module):
    """F(x [B,H,W,C], c_noise [B], labels [B] | None, train, augment_labels, example_ids [B] | None) → [B,H,W,out_channels]."""
    model_channels: int = 128
    channel_mult: Sequence[int] = (2, 2, 2)
    num_blocks: int = 4
    attn_resolutions: Sequence[int] = (16,)
    dropout: float = 0.13
    num_classes: int = 0
    label_dropout: float = 0.0
    augment_dim: int = 0
    out_channels: int = 0          # 0: same as the input (iDDPM uses 2×)
    channel_mult_emb: int = 4

    @nn.compact
    def __call__(self, x, c_noise, labels=None, train=False, augment_labels=None, example_ids=None):
        b, res, _, c_img = x.shape
        if x.shape[1] != x.shape[2] or res % (2 ** (len(self.channel_mult) - 1)):
            raise ValueError(f"DDPM++ needs square images with side divisible by "
                             f"{2 ** (len(self.channel_mult) - 1)}, got {x.shape[1:3]}")
        labels = check_labels(labels, b, self.num_classes)
        noise_ch, emb_ch = self.model_channels, self.model_channels * self.channel_mult_emb
        emb = positional_embedding(c_noise, noise_ch)                  # [B, C]
        if self.num_classes:
            labels = drop_labels(self, labels, self.label_dropout, self.num_classes, train, example_ids)
            onehot = nn.one_hot(labels, self.num_classes)               # null label → zeros
            emb = emb + nn.Dense(noise_ch, kernel_init=_init, name="map_label")(onehot * np.sqrt(self.num_classes))
        if self.augment_dim:
            aug = jnp.zeros((b, self.augment_dim)) if augment_labels is None else augment_labels
            emb = emb + nn.Dense(noise_ch, use_bias=False, kernel_init=_init, name="map_augment")(aug)
        emb = nn.silu(nn.Dense(emb_ch, kernel_init=_init, name="map_layer0")(emb))
        emb = nn.silu(nn.Dense(emb_ch, kernel_init=_init, name="map_layer1")(emb))

        kw = dict(dropout=self.dropout)
        skips = []
        h = x
        for level, mult in enumerate(self.channel_mult):               # encoder
            r = res >> level
            if level == 0:
                h = Conv(self.model_channels, (3, 3), 1, kernel_init=_init, name=f"enc_{r}_conv")(h)
                h = materialize(h)      # the first skip: else its bias add is redone in each use of the concat
            else:
                h = UNetBlock(h.shape[-1], down=True, name=f"enc_{r}_down", **kw)(h, emb, train, example_ids)
            skips.append(h)
            for i in range(self.num_blocks):
                h = UNetBlock(self.model_channels * mult, attention=r in self.attn_resolutions,
                              name=f"enc_{r}_block{i}", **kw)(h, emb, train, example_ids)
                skips.append(h)
        for level, mult in reversed(list(enumerate(self.channel_mult))):  # decoder
            r = res >> level
            if level == len(self.channel_mult) - 1:
                h = UNetBlock(h.shape[-1], attention=True, name=f"dec_{r}_in0", **kw)(h, emb, train, example_ids)
                h = UNetBlock(h.shape[-1], name=f"dec_{r}_in1", **kw)(h, emb, train, example_ids)
            else:
                h = UNetBlock(h.shape[-1], up=True, name=f"dec_{r}_up", **kw)(h, emb, train, example_ids)
            for i in range(self.num_blocks + 1):
                h = jnp.concatenate([h, skips.pop()], axis=-1)
                h = UNetBlock(self.model_channels * mult, attention=(i == self.num_blocks and r in self.attn_resolutions),
                              name=f"dec_{r}_block{i}", **kw)(h, emb, train, example_ids)
        h = group_norm(h.shape[-1], name="dec_aux_norm", silu=True)(h)
        return Conv(self.out_channels or c_img, (3, 3), 1, kernel_init=_init_zero, name="dec_aux_conv")(h)

"""U-ViT (Bao et al. 2023): every input is a token (time, label, patches); long skips between
shallow and deep blocks; a 3×3 conv after un-patchifying."""
import flax.linen as nn
import jax.numpy as jnp

from jaxrepro.models.layers import check_labels, drop_labels, positional_embedding


class Block(nn.Module):
    """Pre-norm transformer block; with `skip`, the long skip enters through Linear(2d → d)."""
    heads: int
    mlp_ratio: float = 4.0
    skip: bool = False

    @nn.compact
    def __call__(self, x, skip=None):
        d = x.shape[-1]
        if self.skip:
            x = nn.Dense(d, name="skip_linear")(jnp.concatenate([x, skip], axis=-1))
        x = x + nn.MultiHeadDotProductAttention(self.heads, name="attn")(nn.LayerNorm(name="norm1")(x))
        h = nn.Dense(int(d * self.mlp_ratio), name="fc1")(nn.LayerNorm(name="norm2")(x))
        return x + nn.Dense(d, name="fc2")(nn.gelu(h))


class UViT(nn.Module):
    """F(x [B,H,W,C], c_noise [B], labels [B] | None, train) → [B,H,W,C]."""
    patch_size: int = 2
    embed_dim: int = 512
    depth: int = 13
    num_heads: int = 8
    mlp_ratio: float = 4.0
    mlp_time_embed: bool = False
    num_classes: int = 0
    label_dropout: float = 0.0

    @nn.compact
    def __call__(self, x, c_noise, labels=None, train=False):
        b, hh, ww, c = x.shape
        p, d = self.patch_size, self.embed_dim
        if hh % p or ww % p:
            raise ValueError(f"U-ViT patch size {p} must divide the image size {x.shape[1:3]}")
        labels = check_labels(labels, b, self.num_classes)
        tokens = nn.Conv(d, (p, p), strides=(p, p), padding="VALID", name="patch_embed")(x)
        tokens = tokens.reshape(b, -1, d)                                 # [B, L, d]
        t = positional_embedding(c_noise, d)
        if self.mlp_time_embed:
            t = nn.Dense(d, name="time_fc2")(nn.silu(nn.Dense(4 * d, name="time_fc1")(t)))
        extra = [t[:, None]]
        if self.num_classes:
            labels = drop_labels(self, labels, self.label_dropout, self.num_classes, train)
            extra.append(nn.Embed(self.num_classes + 1, d, name="label_emb")(labels)[:, None])
        h = jnp.concatenate(extra + [tokens], axis=1)
        pos = self.param("pos_embed", nn.initializers.normal(0.02), (1, h.shape[1], d))
        h = h + pos
        skips = []
        for i in range(self.depth // 2):
            h = Block(self.num_heads, self.mlp_ratio, name=f"in_{i}")(h)
            skips.append(h)
        h = Block(self.num_heads, self.mlp_ratio, name="mid")(h)
        for i in range(self.depth // 2):
            h = Block(self.num_heads, self.mlp_ratio, skip=True, name=f"out_{i}")(h, skips.pop())
        h = nn.Dense(p * p * c, name="decoder_pred")(nn.LayerNorm(name="norm")(h))[:, len(extra):]
        h = h.reshape(b, hh // p, ww // p, p, p, c).transpose(0, 1, 3, 2, 4, 5).reshape(b, hh, ww, c)
        return nn.Conv(c, (3, 3), padding=1, name="final_conv")(h)

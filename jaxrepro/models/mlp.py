"""MLP denoiser for tiny images and vector data; the noise embedding enters every layer."""
import flax.linen as nn
import jax.numpy as jnp

from jaxrepro.models.layers import check_labels, drop_labels, dropout, positional_embedding


class MLP(nn.Module):
    """F(x [B, ...], c_noise [B], labels [B] | None, train, example_ids [B] | None) → x-shaped."""
    width: int = 256
    depth: int = 4
    emb_dim: int = 64
    num_classes: int = 0
    label_dropout: float = 0.0
    dropout: float = 0.0
    noise_scale: float = 1.0      # c_noise is multiplied by this before the positional embedding

    @nn.compact
    def __call__(self, x, c_noise, labels=None, train=False, example_ids=None):
        b = x.shape[0]
        labels = check_labels(labels, b, self.num_classes)
        emb = positional_embedding(c_noise * self.noise_scale, self.emb_dim)
        if self.num_classes:
            labels = drop_labels(self, labels, self.label_dropout, self.num_classes, train, example_ids)
            emb = emb + nn.Embed(self.num_classes + 1, self.emb_dim, name="label_emb")(labels)
        emb = nn.silu(nn.Dense(self.emb_dim, name="emb_fc")(emb))
        h = x.reshape(b, -1)
        for i in range(self.depth):
            h = nn.Dense(self.width, name=f"fc{i}")(h) + nn.Dense(self.width, name=f"emb{i}")(emb)
            h = dropout(self, nn.silu(h), self.dropout, train, example_ids)
        return nn.Dense(x[0].size, name="out")(h).reshape(x.shape)

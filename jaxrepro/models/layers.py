"""Shared pieces of the score networks: noise embeddings, group norm, label dropout."""
import flax.linen as nn
import jax
import jax.extend.random
import jax.numpy as jnp
import numpy as np

from jaxrepro.models.fast_layers import GroupNorm, materialize


def positional_embedding(c_noise, num_channels, max_positions=10000, endpoint=True):
    """EDM's PositionalEmbedding with SongUNet's [sin, cos] order: [B] → [B, num_channels]."""
    half = num_channels // 2
    freqs = jnp.arange(half, dtype=jnp.float32) / (half - (1 if endpoint else 0))
    freqs = (1.0 / max_positions) ** freqs
    arg = jnp.asarray(c_noise, jnp.float32).reshape(-1)[:, None] * freqs[None]
    return jnp.concatenate([jnp.sin(arg), jnp.cos(arg)], axis=1)


def group_norm(channels, eps=1e-6, name=None, silu=False):
    """GroupNorm with min(32, channels // 4) groups of this layer's channels (EDM), SiLU after it if `silu`."""
    return GroupNorm(num_groups=min(32, channels // 4), epsilon=eps, silu=silu, name=name)


def null_labels(batch, num_classes):
    """The unconditional label (index num_classes) for a batch."""
    return jnp.full((batch,), num_classes, jnp.int32)


def check_labels(labels, batch, num_classes):
    """[B] int labels, null labels when None; refuses labels for an unconditional network."""
    if num_classes == 0:
        if labels is not None:
            raise ValueError("this network is unconditional (num_classes=0) but labels were given")
        return None
    if labels is None:
        return null_labels(batch, num_classes)
    labels = jnp.asarray(labels, jnp.int32).reshape(-1)
    if labels.shape != (batch,):
        raise ValueError(f"labels must be [B] = [{batch}], got shape {labels.shape}")
    return labels


def _example_uniform(module, shape, example_ids):
    """U(0, 1) of `shape` [B, ...] from the layer's key; row j from fold_in(key, example_ids[j]) when given,
    so an example's draw does not depend on which batch (or device, or micro-batch) it is in."""
    key = module.make_rng("dropout")
    if example_ids is None:
        return jax.random.uniform(key, shape)
    return jax.vmap(lambda i: jax.random.uniform(jax.random.fold_in(key, i), shape[1:]))(example_ids)


def drop_labels(module, labels, rate, num_classes, train, example_ids=None):
    """Label dropout for classifier-free guidance: with probability `rate` a label becomes null."""
    if not train or rate <= 0 or labels is None:
        return labels
    keep = _example_uniform(module, labels.shape, example_ids) >= rate
    return jnp.where(keep, labels, num_classes)


def _words(key, m):
    """m uniform uint32 words from `key`: with a threefry key both output words of each Threefry-2x32 hash
    (m/2 hashes, where jax.random.bits in JAX's default partitionable mode hashes once per word and keeps
    the XOR of the two), else jax.random.bits. The same on every backend, so masks do not depend on it."""
    typed = jnp.issubdtype(key.dtype, jax.dtypes.prng_key)
    impl = str(jax.random.key_impl(key)) if typed else jax.config.jax_default_prng_impl
    data = jax.random.key_data(key)
    if "threefry" not in impl or data.shape != (2,) or data.dtype != jnp.uint32:
        return jax.random.bits(key, (m,), jnp.uint32)
    return jax.extend.random.threefry_2x32(data, jnp.arange(m, dtype=jnp.uint32))


def _example_bits16(module, shape, example_ids):
    """Uniform uint16 of `shape` [B, ...], four per Threefry-2x32 hash (two words of two halves each)."""
    key = module.make_rng("dropout")
    n = int(np.prod(shape[1:]))

    def draw(k):
        words = _words(k, (n + 1) // 2)
        return jax.lax.bitcast_convert_type(words, jnp.uint16).reshape(-1)[:n].reshape(shape[1:])
    if example_ids is None:
        return jax.vmap(draw)(jax.random.split(key, shape[0]))
    return jax.vmap(lambda i: draw(jax.random.fold_in(key, i)))(example_ids)


def dropout(module, x, rate, train, example_ids=None):
    """Inverted dropout of x [B, ...]; the mask of example j is a function of (layer key, example_ids[j]).

    The drop probability is `rate` rounded to a multiple of 2⁻¹⁶ (16-bit uniforms), and kept values are
    scaled by the inverse of the rounded keep probability, so E[output] = x exactly. The mask is stored
    once as bytes (on the CPU XLA would otherwise rehash it inside every consumer, ~5 % of a DDPM++ step)."""
    if not train or rate <= 0:
        return x
    threshold = int(round(rate * 65536))
    if threshold >= 65536:
        return jnp.zeros_like(x)
    keep = _example_bits16(module, x.shape, example_ids).astype(jnp.int32) >= threshold
    keep = materialize(keep.astype(jnp.uint8))
    return jnp.where(keep != 0, x * (65536 / (65536 - threshold)), jnp.zeros_like(x))

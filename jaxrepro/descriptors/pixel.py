"""Pixel-space descriptors: cosine of mean-centred images, and normalised L2 distance."""
import jax.numpy as jnp
from jax import lax

HIGHEST = lax.Precision.HIGHEST


class PixelCosine:
    """Correlation of mean-subtracted images (Kadkhodaie et al. 2024): cosine of centred pixels."""
    name = "pixel_cosine"
    kind = "dot"          # similarity(a, b) = a · b of unit features
    threshold = 0.95      # fixed "same image" threshold, from experiments/descriptor_calibration.py on digits

    def embed(self, images):
        """[B, *image] → [B, D] unit vectors of the centred pixels."""
        f = jnp.asarray(images, jnp.float32).reshape(len(images), -1)
        f = f - f.mean(axis=1, keepdims=True)
        return f / jnp.maximum(jnp.linalg.norm(f, axis=1, keepdims=True), 1e-12)

    def similarity(self, a, b):
        """[A, D], [B, D] → [A, B] cosines."""
        return jnp.dot(a, b.T, precision=HIGHEST)

    def pair_similarity(self, a, b):
        """[A, D], [A, D] → [A] cosines of matching rows."""
        return jnp.sum(a * b, axis=1)


class PixelL2:
    """Normalised pixel L2 (Carlini et al. 2023): similarity = −‖x1 − x2‖ / √D."""
    name = "pixel_l2"
    kind = "l2"           # similarity(a, b) = −‖a − b‖
    threshold = -0.25     # "same image" when the RMS pixel difference is < 0.25 (1/8 of the [−1, 1] range);
    #                       from experiments/descriptor_calibration.py on digits (tracks the regime best)

    def embed(self, images):
        """[B, *image] → [B, D] pixels scaled by 1/√D."""
        f = jnp.asarray(images, jnp.float32).reshape(len(images), -1)
        return f / jnp.sqrt(f.shape[1])

    def similarity(self, a, b):
        """[A, D], [B, D] → [A, B] negative distances (matmul form, clamped at 0)."""
        d2 = jnp.sum(a * a, 1)[:, None] - 2 * jnp.dot(a, b.T, precision=HIGHEST) + jnp.sum(b * b, 1)[None]
        return -jnp.sqrt(jnp.maximum(d2, 0.0))

    def pair_similarity(self, a, b):
        """[A, D], [A, D] → [A] negative distances of matching rows (exact differences)."""
        return -jnp.linalg.norm(a - b, axis=1)

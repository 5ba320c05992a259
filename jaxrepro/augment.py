"""EDM's non-leaky geometric augmentation (Karras et al. 2022, App. F.2) for one image.

CIFAR-10 setting of EDM: x-flip (always randomised), y-flip, isotropic scaling, fractional
rotation, anisotropic scaling and fractional translation, each applied with probability p; the
9 augment labels [xflip, yflip, scale, cos θ − 1, sin θ, w cos r, w sin r, t_x, t_y] are fed to
the network so it can tell augmented data apart (non-leaky). Geometric transforms sample the
image bilinearly with reflect padding (EDM resamples through a 2× sym6 wavelet filter instead).
"""
import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.ndimage import map_coordinates

AUGMENT_DIM = 9
SCALE_STD, ANISO_STD, TRANSLATE_STD = 0.2, 0.2, 0.125   # log2 std, log2 std, fraction of the size
ANISO_ROTATE_PROB = 0.5
XFLIP_MULT = 1e8                                        # EDM: xflip=1e8 → flip decided by a coin


def _rot(theta):
    c, s = jnp.cos(theta), jnp.sin(theta)
    return jnp.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def _scale(sx, sy):
    return jnp.array([[sx, 0.0, 0.0], [0.0, sy, 0.0], [0.0, 0.0, 1.0]])


def _translate(tx, ty):
    return jnp.array([[1.0, 0.0, tx], [0.0, 1.0, ty], [0.0, 0.0, 1.0]])


def warp(image, g_inv):
    """Output pixel (x, y), centred, samples the input at G⁻¹·(x, y, 1): bilinear, reflect padding."""
    h, w, _ = image.shape
    ys, xs = jnp.meshgrid(jnp.arange(h) - (h - 1) / 2, jnp.arange(w) - (w - 1) / 2, indexing="ij")
    src = jnp.einsum("ij,jhw->ihw", g_inv, jnp.stack([xs, ys, jnp.ones_like(xs)]))
    sx, sy = src[0] + (w - 1) / 2, src[1] + (h - 1) / 2
    return jnp.stack([map_coordinates(image[..., c], [sy, sx], order=1, mode="reflect")
                      for c in range(image.shape[-1])], axis=-1)


def augment(key, image, p):
    """(augmented image [H, W, C], augment labels [9]) for one image."""
    k = jax.random.split(key, 14)
    h, w, _ = image.shape
    use = lambda kk, mult=1.0: jax.random.uniform(kk) < mult * p            # noqa: E731
    xflip = jnp.where(use(k[0], XFLIP_MULT), jax.random.bernoulli(k[1]), False)
    yflip = jnp.where(use(k[2]), jax.random.bernoulli(k[3]), False)
    image = jnp.where(xflip, image[:, ::-1], image)
    image = jnp.where(yflip, image[::-1], image)

    s_w = jnp.where(use(k[4]), jax.random.normal(k[5]), 0.0)
    theta = jnp.where(use(k[6]), jax.random.uniform(k[7], minval=-np.pi, maxval=np.pi), 0.0)
    a_w = jnp.where(use(k[8]), jax.random.normal(k[9]), 0.0)
    a_r = jnp.where(jax.random.uniform(k[10]) < ANISO_ROTATE_PROB,
                    jax.random.uniform(k[11], minval=-np.pi, maxval=np.pi), 0.0)
    t_w = jnp.where(use(k[12]), jax.random.normal(k[13], (2,)), 0.0)

    s = 2.0 ** (s_w * SCALE_STD)
    a = 2.0 ** (a_w * ANISO_STD)
    g_inv = (_scale(1 / s, 1 / s) @ _rot(theta)
             @ _rot(-a_r) @ _scale(1 / a, a) @ _rot(a_r)
             @ _translate(-t_w[0] * w * TRANSLATE_STD, -t_w[1] * h * TRANSLATE_STD))
    is_identity = (s_w == 0) & (theta == 0) & (a_w == 0) & jnp.all(t_w == 0)
    image = jnp.where(is_identity, image, warp(image, g_inv))
    labels = jnp.stack([xflip.astype(jnp.float32), yflip.astype(jnp.float32), s_w,
                        jnp.cos(theta) - 1, jnp.sin(theta), a_w * jnp.cos(a_r), a_w * jnp.sin(a_r),
                        t_w[0], t_w[1]])
    return image, labels

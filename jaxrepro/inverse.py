"""Inverse problems with a diffusion prior (deterministic DPS) and ODE encodings (image → noise → image).

Measurement operators A are `jax.tree_util.Partial`s (pytrees, so they pass through jit):
box inpainting (observed pixels kept, the box zeroed), 2× average-pool super-resolution, and a
separable Gaussian blur with symmetric ("reflect" in scipy) borders.

Deterministic DPS (Chung et al. 2023 with the ODE instead of ancestral steps; PAPER.md §5), per step i:
    x̂_0 = D(x_i; σ_i),  x_{i+1} = x_i + (σ_{i+1} − σ_i)(x_i − x̂_0)/σ_i            (Euler, EDM space)
    x_{i+1} ← x_{i+1} − ξ_i ∇_{x_i} ‖z − A(x̂_0)‖²,   ξ_i = ζ (1 + σ_i²) / ‖z − A(x̂_0)‖ or ξ_i = ζ.
The normalised ξ_i is DPS's ζ / ‖z − A(x̂_0)‖ step on the VP variable x_t = x / √(1 + σ²), carried to
EDM space (δx = (1 + σ²) · its gradient step), so the guidance does not vanish at large σ.
The gradient is jax.grad through the denoiser, so a network and the oracle (softmax) run the same code.
Layer: like compare (uses samplers).
"""
import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxrepro.samplers import check_sigmas, invert, sample

OPERATORS = ("inpaint", "sr2", "blur")


def _masked(mask, x):
    return x * mask


def _avg_pool2(x):
    b, h, w, c = x.shape
    return x.reshape(b, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))          # [B, H/2, W/2, C]


def _blur(kernel, x):
    r = (kernel.shape[0] - 1) // 2
    xp = jnp.pad(x, ((0, 0), (r, r), (r, r), (0, 0)), mode="symmetric")   # [B, H+2r, W+2r, C]
    h, w = x.shape[1:3]
    x = sum(kernel[k] * xp[:, k:k + h] for k in range(2 * r + 1))         # [B, H, W+2r, C]
    return sum(kernel[k] * x[:, :, k:k + w] for k in range(2 * r + 1))   # [B, H, W, C]


def box_inpainting(shape, top, left, height, width):
    """A(x) = x with the box [top:top+height, left:left+width] zeroed; shape = (H, W, C)."""
    h, w, _ = shape
    if not (0 <= top < top + height <= h and 0 <= left < left + width <= w):
        raise ValueError(f"box (top={top}, left={left}, height={height}, width={width}) must lie inside {h}×{w}")
    mask = np.ones(shape, np.float32)
    mask[top:top + height, left:left + width] = 0
    return jax.tree_util.Partial(_masked, jnp.asarray(mask))


def super_resolution(shape):
    """A(x) = 2×2 average pooling: [B, H, W, C] → [B, H/2, W/2, C] (H, W even)."""
    if shape[0] % 2 or shape[1] % 2:
        raise ValueError(f"2× super-resolution needs even H and W, got {shape}")
    return jax.tree_util.Partial(_avg_pool2)


def gaussian_blur(blur_sigma, radius=None):
    """A(x) = separable Gaussian blur of std blur_sigma pixels, radius ⌊4·blur_sigma + ½⌋ (scipy's default)."""
    if not blur_sigma > 0:
        raise ValueError(f"blur_sigma must be > 0, got {blur_sigma}")
    radius = int(4 * blur_sigma + 0.5) if radius is None else int(radius)
    k = np.exp(-0.5 * (np.arange(-radius, radius + 1) / blur_sigma) ** 2)
    return jax.tree_util.Partial(_blur, jnp.asarray(k / k.sum(), jnp.float32))


def make_operator(name, shape, **kw):
    """Operator by name: inpaint (default box: the central half), sr2, blur (default blur_sigma 1)."""
    if name == "inpaint":
        h, w, _ = shape
        box = dict(top=h // 4, left=w // 4, height=h // 2, width=w // 2)
        return box_inpainting(shape, **{**box, **kw})
    if name == "sr2":
        return super_resolution(shape)
    if name == "blur":
        return gaussian_blur(kw.get("blur_sigma", 1.0), kw.get("radius"))
    raise ValueError(f"unknown operator {name!r}; allowed: {', '.join(OPERATORS)}")


def _wrap(fn):
    """A pytree jit can take: arrays-only pytrees (Partial, Oracle) as they are, other callables static."""
    leaves = jax.tree_util.tree_leaves(fn)
    if isinstance(fn, jax.tree_util.Partial) or (leaves and all(isinstance(v, (jax.Array, np.ndarray)) for v in leaves)):
        return fn
    return jax.tree_util.Partial(fn)


@dataclasses.dataclass(frozen=True)
class _DPS:
    normalize: bool


def dps_sample(denoise_fn, latents, sigmas, op, measurement, step_size, *, normalize=True):
    """Deterministic DPS from x_0 = latents·σ_0 down `sigmas`: (images [B, ...], ‖A x − z‖ [B])."""
    # denoise_fn(x, σ [B]) → x̂_0 (network or oracle); op(x) → z-shaped; measurement z [B, ...];
    # step_size ζ ≥ 0 (0: the plain Euler ODE sampler); normalize: ξ_i = ζ (1 + σ_i²) / ‖z − A(x̂_0)‖ per sample
    sig = check_sigmas(sigmas)
    if not (np.isfinite(step_size) and step_size >= 0):
        raise ValueError(f"step_size must be a finite number >= 0, got {step_size}")
    latents = jnp.asarray(latents)
    z = jnp.asarray(measurement, latents.dtype)
    expect = jax.eval_shape(op, latents).shape
    if z.shape != expect:
        raise ValueError(f"measurement has shape {z.shape}, the operator gives {expect}")
    x = latents * sig[0]
    return _dps(_wrap(denoise_fn), _wrap(op), x, z, jnp.asarray(sig, latents.dtype),
                jnp.asarray(step_size, latents.dtype), _DPS(bool(normalize)))


def residual_norm(op, images, measurement):
    """‖A x − z‖ per sample [B]."""
    r = op(images) - measurement
    return jnp.sqrt(jnp.sum(r.reshape(r.shape[0], -1) ** 2, axis=1))


@functools.partial(jax.jit, static_argnums=(6,))
def _dps(denoise_fn, op, x, z, sig, zeta, cfg: _DPS):
    batch = (x.shape[0],)
    bshape = (-1,) + (1,) * (x.ndim - 1)

    def loss(x_cur, sigma):                                          # Σ_b ‖z_b − A(x̂_0,b)‖², x̂_0
        x0 = denoise_fn(x_cur, jnp.broadcast_to(sigma, batch)).astype(x.dtype)
        r = (z - op(x0)).reshape(x.shape[0], -1)                       # [B, M]
        return jnp.sum(r * r), (x0, jnp.sqrt(jnp.sum(r * r, axis=1)))

    def step(i, x_cur):
        sigma, sigma_next = sig[i], sig[i + 1]
        grad, (x0, res) = jax.grad(loss, has_aux=True)(x_cur, sigma)   # [B, ...], ([B, ...], [B])
        x_next = x_cur + (sigma_next - sigma) * (x_cur - x0) / sigma
        xi = zeta * (1 + sigma ** 2) / jnp.maximum(res, 1e-12) if cfg.normalize else jnp.broadcast_to(zeta, batch)
        return x_next - xi.reshape(bshape) * grad

    x = lax.fori_loop(0, sig.shape[0] - 1, step, x)
    return x, residual_norm(op, x, z)


# ---------------------------------------------------------------- ODE encodings

def encode(denoise_fn, images, sigmas, solver="heun"):
    """Latents [B, ...] of images at σ_min = min(sigmas) > 0: the PF-ODE integrated upwards (samplers.invert)."""
    return invert(denoise_fn, images, sigmas, solver)


def decode(denoise_fn, latents, sigmas, solver="heun"):
    """Images at σ_min from latents: the PF-ODE down the same grid (no final step to σ = 0)."""
    return sample(denoise_fn, latents, check_sigmas(sigmas, allow_zero_end=False), solver)


def rms(a, b):
    """Root-mean-square difference per sample [B]."""
    d = (jnp.asarray(a) - jnp.asarray(b)).reshape(len(a), -1)
    return jnp.sqrt(jnp.mean(d * d, axis=1))


def encoding_agreement(z1, z2):
    """({cosine [B], rel_l2 [B]} of two encodings of the same images, the same for z2 rolled by a row: chance)."""
    def stats(a, b):
        a, b = a.reshape(len(a), -1), b.reshape(len(b), -1)
        na, nb = jnp.linalg.norm(a, axis=1), jnp.linalg.norm(b, axis=1)
        return {"cosine": jnp.sum(a * b, axis=1) / jnp.maximum(na * nb, 1e-12),
                "rel_l2": jnp.linalg.norm(a - b, axis=1) / jnp.maximum(0.5 * (na + nb), 1e-12)}
    z1, z2 = jnp.asarray(z1), jnp.asarray(z2)
    return stats(z1, z2), stats(z1, jnp.roll(z2, 1, axis=0))

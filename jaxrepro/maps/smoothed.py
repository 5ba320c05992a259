"""Smoothed closed-form denoiser: σ-CFDM of Scarvelis, Borde & Solomon ("Closed-form diffusion models", TMLR 2025).

    D_λ(x; σ) = (1/M) Σ_m D*(x + λ(1 + σ) e_m; σ),   e_m ~ N(0, I) drawn once from a seed,
with D* Theorem 1's denoiser. Their model runs in rectified-flow time, x_t = t·y + (1 − t)·ε, and smooths
the closed-form score by evaluating its softmax at M perturbed copies z + λe_m of the query (their
SmoothedScore adds −2λt⟨e_m, y_i⟩ to ‖z − t y_i‖², which equals ‖z + λe_m − t y_i‖² up to terms that
cancel in the softmax) and averaging; λ is fixed in x_t units. In EDM space x̂ = x_t / t, σ = (1 − t)/t,
so the perturbation is λ(1 + σ)e_m. λ = 0 is Theorem 1; the averaged weights make the flow end on
barycentres of nearby training points instead of the points themselves.
"""
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxrepro.oracle import _check_query, make_optimal_denoiser, sharded_optimal_denoiser


@flax.struct.dataclass
class Smoothed:
    """D_λ(x, σ) around an inner Theorem-1 denoiser (an Oracle, or a Partial of the sharded one); a pytree."""
    inner: object                     # D*(x, σ) as a pytree
    noise: jax.Array                  # [M, *image] fixed unit Gaussians e_m
    lam: jax.Array                    # [] smoothing λ (x_t units)
    image_shape: tuple = flax.struct.field(pytree_node=False)

    def __call__(self, x, sigma):
        """D_λ(x; σ): x [B, *image], sigma scalar or [B]."""
        _check_query(x, sigma, self.image_shape)
        return _apply(self, x, sigma)


@jax.jit
def _apply(sm, x, sigma):
    sig = jnp.broadcast_to(jnp.asarray(sigma, x.dtype), (x.shape[0],))
    scale = (sm.lam * (1.0 + sig)).reshape((-1,) + (1,) * (x.ndim - 1))     # [B, 1, ...]
    total = lax.fori_loop(0, sm.noise.shape[0],
                          lambda m, acc: acc + sm.inner(x + scale * sm.noise[m][None], sig), jnp.zeros_like(x))
    return total / sm.noise.shape[0]


def _noise(num_noise, shape, seed):
    if int(num_noise) < 1:
        raise ValueError(f"num_noise must be >= 1, got {num_noise}")
    return jnp.asarray(np.random.default_rng(seed).standard_normal((int(num_noise), *shape)), jnp.float32)


def _check_lam(lam):
    if not np.isfinite(lam) or lam < 0:
        raise ValueError(f"smoothing lam must be a finite number >= 0, got {lam}")
    return jnp.asarray(lam, jnp.float32)


def make_smoothed(images, lam, *, num_noise=16, seed=0, **oracle_kw):
    """σ-CFDM denoiser over images [N, *image] with smoothing λ and M = num_noise fixed perturbations."""
    inner = make_optimal_denoiser(images, **oracle_kw)
    return Smoothed(inner, _noise(num_noise, inner.image_shape, seed), _check_lam(lam), inner.image_shape)


def sharded_smoothed(images, mesh, lam, axis="data", *, num_noise=16, seed=0, **oracle_kw):
    """σ-CFDM with the inner oracle's training set split over `mesh` axis `axis` (sharded_optimal_denoiser)."""
    shape = tuple(np.shape(images)[1:])
    inner = jax.tree_util.Partial(sharded_optimal_denoiser(images, mesh, axis, **oracle_kw))
    return Smoothed(inner, _noise(num_noise, shape, seed), _check_lam(lam), shape)

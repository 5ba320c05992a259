"""The denoiser Jacobian ∂D/∂x at a point: full matrix from batched jvps, singular values, numerical rank.

J [d, d] is built column block by column block: for a chunk of k basis vectors e_j the tangents
J e_j come from one vmapped jvp (k forward-mode passes batched into one call), chunks run under
lax.map — never one backward pass per pixel. Numerical rank (Wang et al. 2024, PAPER.md §5): the
smallest r with Σ_{i≤r} s_i² ≥ energy · Σ_i s_i² (s sorted descending; energy 0.99).
Layer: like compare (sees denoisers only as callables D(x, σ)).
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

DEFAULT_CHUNK = 64


def _wrap(denoise_fn):
    leaves = jax.tree_util.tree_leaves(denoise_fn)
    if leaves and all(isinstance(leaf, (jax.Array, np.ndarray)) for leaf in leaves):
        return denoise_fn
    return jax.tree_util.Partial(denoise_fn)


@functools.partial(jax.jit, static_argnums=(3,))
def _jacobian(denoise_fn, x, sigma, chunk):
    shape, d = x.shape, x.size
    n_chunks = -(-d // chunk)
    sig = jnp.reshape(sigma, (1,)).astype(x.dtype)

    def f(v):                                                        # [d] → [d]
        return denoise_fn(v.reshape(1, *shape), sig).reshape(-1).astype(x.dtype)

    def block(start):                                                # columns start … start + chunk − 1
        idx = start + jnp.arange(chunk)
        basis = (idx[:, None] == jnp.arange(d)[None, :]).astype(x.dtype)   # [chunk, d]; rows past d are 0
        return jax.vmap(lambda t: jax.jvp(f, (x.reshape(-1),), (t,))[1])(basis)   # [chunk, d] = (J e_j)ᵀ

    cols = lax.map(block, jnp.arange(n_chunks) * chunk)              # [n_chunks, chunk, d]
    return cols.reshape(-1, d)[:d].T                                 # [d, d], J[i, j] = ∂D_i/∂x_j


def jacobian(denoise_fn, x, sigma, chunk=DEFAULT_CHUNK):
    """∂D/∂x [d, d] at one point x [*image] and noise level σ (scalar), d = x.size."""
    x = jnp.asarray(x)
    if not (np.isscalar(sigma) or np.ndim(sigma) == 0) or not float(sigma) > 0:
        raise ValueError(f"sigma must be one number > 0, got {sigma!r}")
    if int(chunk) < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    return _jacobian(_wrap(denoise_fn), x, jnp.asarray(sigma, x.dtype), min(int(chunk), x.size))


def singular_values(denoise_fn, x, sigma, chunk=DEFAULT_CHUNK):
    """Singular values of ∂D/∂x at x [*image], σ (descending, float64 numpy [d])."""
    return np.linalg.svd(np.asarray(jacobian(denoise_fn, x, sigma, chunk), np.float64), compute_uv=False)


def numerical_rank(svals, energy=0.99):
    """Smallest r with Σ_{i≤r} s_i² ≥ energy · Σ s_i² (0 for a zero spectrum); svals any order."""
    if not 0 < energy <= 1:
        raise ValueError(f"energy must be in (0, 1], got {energy}")
    s2 = np.sort(np.asarray(svals, np.float64) ** 2)[::-1]
    total = s2.sum()
    if total == 0:
        return 0
    return int(np.searchsorted(np.cumsum(s2), energy * total * (1 - 1e-12)) + 1)


def spectra(denoise_fn, points, sigmas, chunk=DEFAULT_CHUNK, energy=0.99):
    """Singular values [P, S, d] and numerical ranks [P, S] at points [P, *image] for each σ in sigmas [S]."""
    svals = np.stack([np.stack([singular_values(denoise_fn, p, float(s), chunk) for s in sigmas]) for p in points])
    ranks = np.vectorize(lambda i, j: numerical_rank(svals[i, j], energy))(*np.indices(svals.shape[:2]))
    return svals, ranks

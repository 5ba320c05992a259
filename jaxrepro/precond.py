"""EDM preconditioning: a raw network F becomes a denoiser D(x; σ) = c_skip x + c_out F(c_in x, c_noise).

Coefficients from EDM Table 1 (PAPER.md §4), σ_data = 0.5. A denoiser is returned as a
`jax.tree_util.Partial` holding the parameters, so samplers can pass it through jit.
"""
import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from jaxrepro.kernels import VP_BETA_D, VP_BETA_MIN, VP_EPS_T, iddpm_u, vp_sigma, vp_sigma_inv

KINDS = ("vp", "ve", "edm", "iddpm")


@dataclasses.dataclass(frozen=True)
class Precond:
    """Preconditioning of one kind: coefficients, σ rounding and supported σ range."""
    kind: str = "edm"
    sigma_data: float = 0.5
    M: int = 1000          # iDDPM grid size
    C1: float = 0.001
    C2: float = 0.008

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"unknown preconditioning {self.kind!r}; allowed: {', '.join(KINDS)}")

    @functools.cached_property
    def u(self):
        """iDDPM σ grid u_0 > … > u_M = 0 (float64 numpy)."""
        return iddpm_u(self.M, self.C1, self.C2)

    @property
    def sigma_range(self):
        """(σ_min, σ_max) the network is trained for (EDM Table 1)."""
        if self.kind == "vp":
            return float(vp_sigma(VP_EPS_T)), float(vp_sigma(1.0))
        if self.kind == "ve":
            return 0.02, 100.0
        if self.kind == "iddpm":
            return float(self.u[self.M - 1]), float(self.u[0])
        return 0.0, float("inf")

    def round_sigma(self, sigma):
        """σ on the network's grid (EDM's round_sigma): the nearest u_j, j = 0..M, for iDDPM; else σ."""
        if self.kind != "iddpm":
            return sigma
        if isinstance(sigma, (np.ndarray, float)):                       # float64 grids stay float64
            return self.u[np.argmin(np.abs(np.asarray(sigma)[..., None] - self.u), axis=-1)]
        u = jnp.asarray(self.u, jnp.asarray(sigma).dtype)                # [M + 1], u_M = 0 included
        return u[self._index(sigma)]

    def _index(self, sigma):
        """argmin_j |σ − u_j| over j = 0..M (EDM searches u including u_M = 0)."""
        u = jnp.asarray(self.u, jnp.asarray(sigma).dtype)
        return jnp.argmin(jnp.abs(jnp.asarray(sigma)[..., None] - u), axis=-1)

    def coefficients(self, sigma):
        """(c_skip, c_out, c_in, c_noise) at σ (any shape); iDDPM rounds σ for c_noise only (as EDM)."""
        sigma = jnp.asarray(sigma)
        one = jnp.ones_like(sigma)
        if self.kind == "vp":
            return one, -sigma, 1 / jnp.sqrt(sigma ** 2 + 1), 999.0 * vp_sigma_inv(sigma, VP_BETA_D, VP_BETA_MIN)
        if self.kind == "ve":
            return one, sigma, one, jnp.log(0.5 * sigma)
        if self.kind == "iddpm":
            return one, -sigma, 1 / jnp.sqrt(sigma ** 2 + 1), (self.M - 1 - self._index(sigma)).astype(sigma.dtype)
        sd = self.sigma_data
        return (sd ** 2 / (sigma ** 2 + sd ** 2), sigma * sd / jnp.sqrt(sigma ** 2 + sd ** 2),
                1 / jnp.sqrt(sigma ** 2 + sd ** 2), jnp.log(sigma) / 4)


def apply_denoiser(apply_fn, precond, params, x, sigma, labels=None, train=False, rngs=None,
                   augment_labels=None, example_ids=None):
    """D(x; σ) = c_skip x + c_out F(c_in x, c_noise); x [B, ...], sigma scalar or [B]; example_ids [B] key
    each example's dropout (training)."""
    sigma = jnp.broadcast_to(jnp.asarray(sigma, x.dtype), (x.shape[0],))
    c_skip, c_out, c_in, c_noise = precond.coefficients(sigma)
    bshape = (-1,) + (1,) * (x.ndim - 1)
    kwargs = {} if rngs is None else {"rngs": rngs}
    if augment_labels is not None:
        kwargs["augment_labels"] = augment_labels
    if example_ids is not None:
        kwargs["example_ids"] = example_ids
    f = apply_fn(params, c_in.reshape(bshape) * x, c_noise, labels, train, **kwargs)
    if precond.kind == "iddpm":          # the network predicts 2C channels; the first C are ε
        f = f[..., :x.shape[-1]]
    return (c_skip.reshape(bshape) * x + c_out.reshape(bshape) * f.astype(x.dtype)).astype(x.dtype)


@dataclasses.dataclass(frozen=True)
class _BoundDenoise:
    """Hashable (apply_fn, precond) pair, called with params first."""
    apply_fn: object
    precond: Precond

    def __call__(self, params, x, sigma, labels=None, train=False, rngs=None, augment_labels=None):
        return apply_denoiser(self.apply_fn, self.precond, params, x, sigma, labels, train, rngs, augment_labels)


def make_denoiser(apply_fn, params, kind="edm", **precond_kw):
    """D(x, σ, labels=None) for a network apply_fn(params, x, c_noise, labels, train) → x-shaped."""
    return jax.tree_util.Partial(_BoundDenoise(apply_fn, Precond(kind, **precond_kw)), params)


def _with_labels(denoise_fn, labels, x, sigma):
    return denoise_fn(x, sigma, labels)


def with_labels(denoise_fn, labels):
    """D(x, σ) of a conditional denoiser with its class labels [B] bound."""
    return jax.tree_util.Partial(_with_labels, denoise_fn, jnp.asarray(labels, jnp.int32))


def _cfg(denoise_fn, labels, weight, null, x, sigma):
    d_cond = denoise_fn(x, sigma, labels)
    d_uncond = denoise_fn(x, sigma, jnp.full_like(labels, null))
    return d_cond + weight * (d_cond - d_uncond)


def classifier_free_guidance(denoise_fn, labels, weight, num_classes):
    """D(x, σ) = D(x, σ, c) + w (D(x, σ, c) − D(x, σ, ∅)); the null label ∅ is index num_classes."""
    return jax.tree_util.Partial(_cfg, denoise_fn, jnp.asarray(labels, jnp.int32),
                                 jnp.asarray(weight, jnp.float32), jnp.asarray(num_classes, jnp.int32))

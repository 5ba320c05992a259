"""Denoising score-matching losses λ(σ)‖D(y + n; σ) − y‖², n ~ N(0, σ²I) (EDM Table 1, PAPER.md §4).

σ sampling and weights per kind:
  vp:  t ~ U(ε_t, 1), σ = σ_VP(t),               λ = 1/σ²
  ve:  σ = σ_min (σ_max/σ_min)^u, u ~ U(0, 1),    λ = 1/σ²
  edm: ln σ ~ N(P_mean, P_std²),                  λ = (σ² + σ_d²)/(σ σ_d)²
The per-example loss sums over pixels (EDM's convention); the batch loss is the mean.
"""
import dataclasses

import jax
import jax.numpy as jnp

from jaxrepro.kernels import VP_BETA_D, VP_BETA_MIN, VP_EPS_T, vp_sigma

LOSS_KINDS = ("vp", "ve", "edm")


@dataclasses.dataclass(frozen=True)
class LossConfig:
    """σ distribution and weighting of one DSM loss."""
    kind: str = "edm"
    P_mean: float = -1.2        # edm: mean of ln σ
    P_std: float = 1.2          # edm: std of ln σ
    sigma_data: float = 0.5     # edm
    sigma_min: float = 0.02     # ve
    sigma_max: float = 100.0    # ve
    eps_t: float = VP_EPS_T     # vp
    beta_d: float = VP_BETA_D   # vp
    beta_min: float = VP_BETA_MIN

    def __post_init__(self):
        if self.kind not in LOSS_KINDS:
            raise ValueError(f"unknown loss {self.kind!r}; allowed: {', '.join(LOSS_KINDS)}")
        if self.P_std <= 0 or not 0 < self.sigma_min < self.sigma_max:
            raise ValueError(f"need P_std > 0 and 0 < sigma_min < sigma_max, got {self}")


def sample_sigma(key, shape, cfg: LossConfig):
    """σ drawn from the loss's training distribution."""
    if cfg.kind == "vp":
        t = jax.random.uniform(key, shape, minval=cfg.eps_t, maxval=1.0)
        return vp_sigma(t, cfg.beta_d, cfg.beta_min)
    if cfg.kind == "ve":
        u = jax.random.uniform(key, shape)
        return cfg.sigma_min * (cfg.sigma_max / cfg.sigma_min) ** u
    return jnp.exp(cfg.P_mean + cfg.P_std * jax.random.normal(key, shape))


def loss_weight(sigma, cfg: LossConfig):
    """λ(σ)."""
    if cfg.kind in ("vp", "ve"):
        return 1.0 / sigma ** 2
    sd = cfg.sigma_data
    return (sigma ** 2 + sd ** 2) / (sigma * sd) ** 2


def draw_noise(keys, shape, cfg: LossConfig):
    """(σ [B], n [B, *shape]) with example j's σ and noise drawn from keys[j] alone."""
    def one(key):
        k_sigma, k_noise = jax.random.split(key)
        sigma = sample_sigma(k_sigma, (), cfg)
        return sigma, sigma * jax.random.normal(k_noise, shape)
    return jax.vmap(one)(keys)


def batch_loss(denoise, y, keys, cfg: LossConfig):
    """λ(σ_j)‖D(y_j + n_j; σ_j) − y_j‖² per example [B], one batched D(x [B, ...], σ [B]) call."""
    sigma, n = draw_noise(keys, y.shape[1:], cfg)
    d = denoise(y + n.astype(y.dtype), sigma.astype(y.dtype))
    return loss_weight(sigma, cfg) * jnp.sum((d - y) ** 2, axis=tuple(range(1, y.ndim)))


def example_loss(denoise, y, key, cfg: LossConfig):
    """λ(σ)‖D(y + n; σ) − y‖² for one example y [*image] with its own key; D(x [1, ...], σ [1])."""
    return batch_loss(denoise, y[None], key[None], cfg)[0]

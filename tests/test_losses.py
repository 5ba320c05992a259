import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrepro import kernels
from jaxrepro.losses import LossConfig, example_loss, loss_weight, sample_sigma
from jaxrepro.oracle import gaussian_denoiser

C, DIM = 0.5, 4


def expected_optimal_loss(cfg):
    """E_σ[λ(σ) · DIM · c²σ²/(c²+σ²)] by quadrature over the σ law (posterior variance of N(0, c²))."""
    def f(sigma):
        return loss_weight(sigma, cfg) * DIM * C ** 2 * sigma ** 2 / (C ** 2 + sigma ** 2)
    if cfg.kind == "vp":
        t = np.linspace(cfg.eps_t, 1.0, 200_001)
        return np.trapezoid(f(kernels.vp_sigma(t)), t) / (1 - cfg.eps_t)
    if cfg.kind == "ve":
        u = np.linspace(0, 1, 200_001)
        return np.trapezoid(f(cfg.sigma_min * (cfg.sigma_max / cfg.sigma_min) ** u), u)
    z, w = np.polynomial.hermite_e.hermegauss(80)
    return np.sum(w * f(np.exp(cfg.P_mean + cfg.P_std * z))) / np.sqrt(2 * np.pi)


@pytest.mark.parametrize("cfg", [LossConfig("vp"), LossConfig("ve"), LossConfig("edm"),
                                 LossConfig("edm", P_mean=0.3, P_std=0.6)])
def test_monte_carlo_loss_of_the_optimal_denoiser_matches_its_formula(cfg):
    n = 100_000
    keys = jax.random.split(jax.random.PRNGKey(0), n)
    ys = C * jax.random.normal(jax.random.PRNGKey(1), (n, DIM))
    den = lambda x, s: gaussian_denoiser(x, s, 0.0, C)                 # noqa: E731
    losses = jax.jit(jax.vmap(lambda y, k: example_loss(den, y, k, cfg)))(ys, keys)
    mc, se = float(jnp.mean(losses)), float(jnp.std(losses)) / np.sqrt(n)
    assert abs(mc - expected_optimal_loss(cfg)) < 4 * se + 1e-3, (mc, expected_optimal_loss(cfg), se)


def test_sigma_laws():
    s = np.asarray(sample_sigma(jax.random.PRNGKey(0), (200_000,), LossConfig("edm")))
    assert abs(np.log(s).mean() + 1.2) < 0.01 and abs(np.log(s).std() - 1.2) < 0.01
    s = np.asarray(sample_sigma(jax.random.PRNGKey(0), (200_000,), LossConfig("ve")))
    assert s.min() >= 0.02 and s.max() <= 100 and abs(np.median(np.log(s)) - np.log(np.sqrt(0.02 * 100))) < 0.02
    s = np.asarray(sample_sigma(jax.random.PRNGKey(0), (200_000,), LossConfig("vp")))
    np.testing.assert_allclose(np.median(s), kernels.vp_sigma(np.median(np.linspace(1e-5, 1, 1001))), rtol=0.02)


def test_bad_loss_config():
    with pytest.raises(ValueError, match="allowed: vp, ve, edm"):
        LossConfig("flow")
    with pytest.raises(ValueError, match="P_std"):
        LossConfig("edm", P_std=0.0)

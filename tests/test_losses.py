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
    losses = np.asarray(jax.jit(jax.vmap(lambda y, k: example_loss(den, y, k, cfg)))(ys, keys), np.float64)
    # fixed seeds; mean and SE accumulated in float64 (a float32 sum of 1e5 terms could err by up to n·u ≈ 6e-3
    # relative in the worst order). Tolerance: 4 SE (SE = 0.005…0.009, observed |z| ≤ 0.6) plus 1e-5 relative
    # for the float32 per-example losses (≈ 10 roundings each) and the quadrature (trapezoid on 2e5 points
    # or 80-node Gauss–Hermite of a smooth bounded integrand: < 1e-8).
    mc, se = losses.mean(), losses.std() / np.sqrt(n)
    expected = expected_optimal_loss(cfg)
    assert abs(mc - expected) < 4 * se + 1e-5 * abs(expected), (mc, expected, se)


def test_sigma_laws():
    # fixed seed, n = 2e5 draws, every tolerance 4 SE of the statistic
    n = 200_000
    s = np.asarray(sample_sigma(jax.random.PRNGKey(0), (n,), LossConfig("edm")), np.float64)
    # ln σ ~ N(−1.2, 1.2²): SE(mean) = 1.2/√n = 2.7e-3, SE(std) = 1.2/√(2n) = 1.9e-3
    assert abs(np.log(s).mean() + 1.2) < 4 * 1.2 / np.sqrt(n) and abs(np.log(s).std() - 1.2) < 4 * 1.2 / np.sqrt(2 * n)
    s = np.asarray(sample_sigma(jax.random.PRNGKey(0), (n,), LossConfig("ve")), np.float64)
    # ln σ ~ U(ln 0.02, ln 100), width w = 8.52: SE(median) = 1/(2·(1/w)·√n) = w/(2√n) = 9.5e-3 (was 0.02 = 2.1 SE)
    width = np.log(100 / 0.02)
    assert s.min() >= 0.02 and s.max() <= 100
    assert abs(np.median(np.log(s)) - np.log(np.sqrt(0.02 * 100))) < 4 * width / (2 * np.sqrt(n))
    s = np.asarray(sample_sigma(jax.random.PRNGKey(0), (n,), LossConfig("vp")), np.float64)
    # t ~ U(1e-5, 1): SE(median t) = (1 − 1e-5)/(2√n); σ = σ_VP(t) is monotone, so SE(median σ)/σ =
    # σ'(t)/σ·SE(t) = 6.1e-3 relative at t = 0.5 (was 0.02 = 3.3 SE)
    t_med = np.median(np.linspace(1e-5, 1, 1001))
    rel_se = kernels.vp_sigma_deriv(t_med) / kernels.vp_sigma(t_med) * (1 - 1e-5) / (2 * np.sqrt(n))
    np.testing.assert_allclose(np.median(s), kernels.vp_sigma(t_med), rtol=4 * rel_se)


def test_bad_loss_config():
    with pytest.raises(ValueError, match="allowed: vp, ve, edm"):
        LossConfig("flow")
    with pytest.raises(ValueError, match="P_std"):
        LossConfig("edm", P_std=0.0)

import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.stats import multivariate_normal

from conftest import brute_force_denoiser
from jaxrepro import oracle

SIGMAS = [0.002, 0.005, 0.02, 0.1, 0.3, 1.0, 3.0, 10.0, 80.0]


def cifar_like_with_near_duplicates(rng, n=96):
    """32×32×3 data in [−1, 1]: smooth images plus pairs differing by ±3e-4 per pixel."""
    coarse = rng.uniform(-1, 1, (n, 8, 8, 3))
    data = np.clip(coarse.repeat(4, 1).repeat(4, 2) + 0.1 * rng.standard_normal((n, 32, 32, 3)), -1, 1)
    for i in range(0, 16, 2):   # 8 near-duplicate pairs
        data[i + 1] = np.clip(data[i] + rng.choice([-3e-4, 3e-4], data[i].shape), -1, 1)
    return data.astype(np.float32)


def queries(rng, data, sigma):
    """Noisy training points, noisy midpoints of near-duplicates and of random pairs, random points."""
    noisy = data[:12] + sigma * rng.standard_normal(data[:12].shape)
    dup_mid = 0.5 * (data[0:8:2] + data[1:8:2]) + 0.05 * sigma * rng.standard_normal(data[0:4].shape)
    pair_mid = 0.5 * (data[20:24] + data[30:34]) + sigma * rng.standard_normal(data[0:4].shape)
    far = rng.uniform(-1, 1, data[:4].shape)
    return np.concatenate([noisy, dup_mid, pair_mid, far]).astype(np.float32)


def test_exact_against_float64_brute_force(rng):
    data = cifar_like_with_near_duplicates(rng)
    den = oracle.make_optimal_denoiser(data, chunk=40)   # several chunks, last one padded
    for sigma in SIGMAS:
        x = queries(rng, data, sigma)
        err = np.abs(np.asarray(den(x, sigma)).reshape(len(x), -1) - brute_force_denoiser(x, sigma, data)).max()
        assert err <= 1e-4, (sigma, err)


def test_plain_float32_matmul_form_is_not_exact(rng):
    """Without the exact re-evaluation the near-duplicate weights go wrong at small σ."""
    data = cifar_like_with_near_duplicates(rng)
    x = queries(rng, data, 0.002)
    plain = oracle.optimal_denoiser(x, 0.002, data, num_exact=0)
    assert np.abs(np.asarray(plain).reshape(len(x), -1) - brute_force_denoiser(x, 0.002, data)).max() > 1e-4


def test_per_query_sigma_and_single_point(rng):
    data = rng.uniform(-1, 1, (50, 6)).astype(np.float32)
    x = rng.standard_normal((5, 6)).astype(np.float32)
    sig = np.array([0.01, 0.1, 1.0, 5.0, 50.0], np.float32)
    np.testing.assert_allclose(oracle.optimal_denoiser(x, sig, data), brute_force_denoiser(x, sig, data), atol=1e-5)
    np.testing.assert_allclose(oracle.optimal_denoiser(x, 3.0, data[:1]), np.repeat(data[:1], 5, 0), atol=1e-6)


def test_conditional_restricts_to_class(rng):
    data = rng.uniform(-1, 1, (60, 4, 4, 3)).astype(np.float32)
    labels = np.arange(60) % 3
    x = rng.uniform(-1, 1, (9, 4, 4, 3)).astype(np.float32)
    q = np.arange(9) % 3
    out = oracle.conditional_optimal_denoiser(x, 0.7, q, data, labels, chunk=16)
    for b in range(9):
        ref = brute_force_denoiser(x[b:b + 1], 0.7, data[labels == q[b]])
        np.testing.assert_allclose(np.asarray(out[b]).reshape(1, -1), ref, atol=1e-5)
    with pytest.raises(ValueError, match="no training points"):
        oracle.conditional_optimal_denoiser(x[:1], 0.7, [5], data, labels)


def test_eps_and_score_forms_match_autodiff(rng):
    """score = ∇ₓ log Σ_i N(x; s y_i, s²σ² I), by jax.grad in float64 (independent of Theorem 1's algebra)."""
    data = rng.uniform(-1, 1, (20, 5))
    x = rng.standard_normal((4, 5))
    s_t, sigma_t = 0.8, 0.6
    with jax.enable_x64(True):
        def log_p(xb):
            return jax.scipy.special.logsumexp(-jnp.sum((xb - s_t * data) ** 2, 1) / (2 * (s_t * sigma_t) ** 2))
        ref_score = np.asarray(jax.vmap(jax.grad(log_p))(jnp.asarray(x)))
        score = np.asarray(oracle.optimal_score(jnp.asarray(x), s_t, sigma_t, jnp.asarray(data)))
        eps = np.asarray(oracle.optimal_eps(jnp.asarray(x), s_t, sigma_t, jnp.asarray(data)))
    np.testing.assert_allclose(score, ref_score, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(eps, -s_t * sigma_t * ref_score, rtol=1e-8, atol=1e-10)


def gaussian_mixture_posterior_mean(x, sigma, means, covs, weights):
    """float64 E[y | y + σn = x] for Σ_k π_k N(μ_k, Σ_k) via explicit covariance algebra."""
    d = x.shape[1]
    out = np.zeros_like(x)
    for b in range(len(x)):
        logp = np.array([np.log(w) + multivariate_normal(m, c + sigma ** 2 * np.eye(d)).logpdf(x[b])
                         for m, c, w in zip(means, covs, weights)])
        post = np.exp(logp - logp.max())
        post /= post.sum()
        for p, m, c in zip(post, means, covs):
            out[b] += p * (m + c @ np.linalg.solve(c + sigma ** 2 * np.eye(d), x[b] - m))
    return out


def test_population_oracles(rng):
    d, dsub, k = 6, 2, 3
    q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    bases = np.stack([q[:, i * dsub:(i + 1) * dsub] for i in range(k)])       # [K, D, d]
    pi = np.array([0.2, 0.3, 0.5])
    covs = [u @ u.T for u in bases]
    x = rng.standard_normal((7, d))
    for sigma in [0.05, 0.5, 2.0]:
        got = oracle.molrg_denoiser(jnp.asarray(x, jnp.float32), sigma, jnp.asarray(bases, jnp.float32),
                                    jnp.log(jnp.asarray(pi, jnp.float32)))
        ref = gaussian_mixture_posterior_mean(x, sigma, [np.zeros(d)] * k, covs, pi)
        np.testing.assert_allclose(got, ref, atol=2e-5)
        mu, c = rng.standard_normal(d), 0.7
        got = oracle.gaussian_denoiser(jnp.asarray(x, jnp.float32), sigma, jnp.asarray(mu, jnp.float32), c)
        ref = gaussian_mixture_posterior_mean(x, sigma, [mu], [c ** 2 * np.eye(d)], [1.0])
        np.testing.assert_allclose(got, ref, atol=1e-5)


def test_bad_input_is_refused_before_compute(rng):
    data = rng.uniform(-1, 1, (10, 4, 4, 3)).astype(np.float32)
    x = data[:2]
    with pytest.raises(ValueError, match="sigma must be > 0"):
        oracle.optimal_denoiser(x, 0.0, data)
    with pytest.raises(ValueError, match="image shape"):
        oracle.optimal_denoiser(x[:, :2], 1.0, data)
    with pytest.raises(ValueError, match=r"\[B\]"):
        oracle.optimal_denoiser(x, np.ones(3), data)
    with pytest.raises(ValueError, match="data must be"):
        oracle.optimal_denoiser(x, 1.0, data[:0])


def test_sharded_matches_single_device(tmp_path):
    """8 forced CPU devices (own process, so XLA_FLAGS applies before jax starts)."""
    script = textwrap.dedent("""
        import numpy as np, jax
        from jax.sharding import Mesh
        from jaxrepro.oracle import optimal_denoiser, sharded_optimal_denoiser
        assert jax.device_count() == 8, jax.devices()
        rng = np.random.default_rng(0)
        data = rng.uniform(-1, 1, (203, 4, 4, 3)).astype(np.float32)   # 203: not a multiple of 8
        x = np.concatenate([data[:6] + 0.01 * rng.standard_normal((6, 4, 4, 3)),
                            rng.uniform(-1, 1, (4, 4, 4, 3))]).astype(np.float32)
        mesh = Mesh(np.array(jax.devices()), ("data",))
        den = sharded_optimal_denoiser(data, mesh, chunk=8)
        for sigma in [0.002, 0.05, 1.0, 80.0]:
            a = np.asarray(den(x, sigma)); b = np.asarray(optimal_denoiser(x, sigma, data))
            assert np.abs(a - b).max() < 1e-5, (sigma, np.abs(a - b).max())
        print("OK")
    """)
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and "OK" in out.stdout, out.stderr[-3000:]

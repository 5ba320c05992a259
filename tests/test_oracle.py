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


EPS32 = float(np.finfo(np.float32).eps)    # 2⁻²³; unit roundoff u = EPS32 / 2


def matmul_form_error_bound(x, sigma, data, exact_entries=False):
    """Per-query bound [B] on |oracle − exact D*|∞ where the oracle keeps the float32 matmul form (no refit).

    Logit error of ‖x‖² − 2x·y_i + ‖y_i‖², the module's own cancellation bound (oracle._needs_refit):
    δl_i ≤ 4·EPS32·(‖x‖² + ‖y_i‖²)/(2σ²) (it exceeds the dot's accumulation error, ≈ u·D·rms(x_k y_k),
    ≥ 10× for these data), plus u·|l_i| for the scaling; exact_entries=True also covers entries re-evaluated
    as Σ_k (x_k − y_k)² (a sum of D non-negative terms: ≤ (D + 2)·u·|l_i| in any order). Softmax is
    shift-invariant, so measure each δ_i from the largest logit's: δl_i → δl_i + δl_top, δl_top → 0.
    Then w'_i = w_i e^{δ_i}/Z' with
    Z' ∈ [1 − b, 1 + b], b = Σ_j w_j expm1(δl_j): |w'_i − w_i| ≤ w_i (expm1(δl_i) + b)/(1 − b), and
    |D' − D*|∞ ≤ Σ_i |w'_i − w_i|·‖y_i − D*‖∞. Plus num/s and the chunked running sums: 2(N + 4)·u·max|y|.
    """
    x = np.asarray(x, np.float64).reshape(len(x), -1)
    y = np.asarray(data, np.float64).reshape(len(data), -1)
    sig = np.broadcast_to(np.asarray(sigma, np.float64), (len(x),))[:, None]   # [B, 1]
    u = EPS32 / 2
    logits = -((x[:, None, :] - y[None]) ** 2).sum(-1) / (2 * sig ** 2)         # [B, N]
    dl = 4 * EPS32 * ((x ** 2).sum(1)[:, None] + (y ** 2).sum(1)[None]) / (2 * sig ** 2) + u * np.abs(logits)
    if exact_entries:
        dl = np.maximum(dl, (y.shape[1] + 2) * u * np.abs(logits))
    i_top = logits.argmax(1)[:, None]
    dl = dl + np.take_along_axis(dl, i_top, 1)
    np.put_along_axis(dl, i_top, 0.0, 1)
    top = np.take_along_axis(logits, i_top, 1)
    w = np.exp(logits - top)
    z = w.sum(1, keepdims=True)
    w /= z
    grown = np.exp(logits - top + dl) / z - w                                   # w_i expm1(δl_i), no overflow
    b = grown.sum(1, keepdims=True)
    assert np.all(b < 0.5), b.max()                                              # Z' bounded away from 0
    spread = np.abs(y[None] - (w @ y)[:, None]).max(-1)                          # ‖y_i − D*‖∞ [B, N]
    return ((grown + w * b) / (1 - b) * spread).sum(1) + 2 * (len(y) + 4) * u * np.abs(y).max()


def test_exact_against_float64_brute_force(rng):
    data = cifar_like_with_near_duplicates(rng)
    den = oracle.make_optimal_denoiser(data, chunk=40)   # several chunks, last one padded
    for sigma in SIGMAS:
        x = queries(rng, data, sigma)
        err = np.abs(np.asarray(den(x, sigma)).reshape(len(x), -1) - brute_force_denoiser(x, sigma, data)).max(1)
        flat = x.reshape(len(x), -1).astype(np.float64)
        refit = 4 * EPS32 * ((flat ** 2).sum(1).max() + (data.reshape(len(data), -1).astype(np.float64) ** 2).sum(1).max()) \
            / (2 * sigma ** 2) > oracle.REFINE_TOL
        if refit:
            # σ ≤ 0.1 here: each chunk's 8 nearest get exact d² = Σ_k (x_k − y_k)², δl ≤ (D + 2)·u·|l| worst case.
            # The unsaturated weights are the near-duplicate pairs at their midpoints (|l| ≤ 13, ‖y_1 − y_2‖∞ =
            # 3e-4): δl ≤ 2.4e-3 moves D* by ≤ 2·δl·1.5e-4 < 1e-6; + 2(N + 4)·u ≈ 1.2e-5 for the sums; 1e-4 is 8×
            # that. Every other weight is saturated: logit gaps ≥ 23 units, ≫ the typical rounding of the exact
            # sums (≈ u·√D·|l|), though not always above the worst case (D·u·|l|). Tightest: a far query at
            # σ = 0.005 whose nearest points are a duplicate pair, gap 69 units at |l| ≈ 3e7 (relative 2e-6).
            assert np.all(err <= 1e-4), (sigma, err.max())
        else:
            # matmul form kept (σ ≥ 0.3): per query, the bound above (≤ 4e-3; the observed ≤ 1/15 of it)
            bound = matmul_form_error_bound(x, sigma, data)
            assert np.all(err <= bound), (sigma, err.max(), (err / bound).max())


def test_plain_float32_matmul_form_is_not_exact(rng):
    """Without the exact re-evaluation the near-duplicate weights go wrong at small σ."""
    data = cifar_like_with_near_duplicates(rng)
    x = queries(rng, data, 0.002)
    plain = oracle.optimal_denoiser(x, 0.002, data, num_exact=0)
    # the matmul form's cancellation here is up to 4·EPS32·(‖x‖² + ‖y‖²)/(2σ²) ≈ 140 logit units, ≫ the 35-unit
    # gaps of the near-duplicate pairs (‖y_1 − y_2‖∞ = 3e-4): rounding picks the pair member, so some of the 8
    # pairs (12 noisy points + 4 midpoints) err by ≈ 1.5e-4 … 3e-4; 1e-4 is above the exact oracle's bound (≤ 1.2e-5)
    assert np.abs(np.asarray(plain).reshape(len(x), -1) - brute_force_denoiser(x, 0.002, data)).max() > 1e-4


def test_per_query_sigma_and_single_point(rng):
    data = rng.uniform(-1, 1, (50, 6)).astype(np.float32)
    x = rng.standard_normal((5, 6)).astype(np.float32)
    sig = np.array([0.01, 0.1, 1.0, 5.0, 50.0], np.float32)
    err = np.abs(np.asarray(oracle.optimal_denoiser(x, sig, data)) - brute_force_denoiser(x, sig, data)).max(1)
    bound = matmul_form_error_bound(x, sig, data, exact_entries=True)     # ≈ 1e-5 (refit path: all σ's at once)
    assert np.all(err <= bound), (err, bound)
    # one point: its weight is exp(0) = 1 exactly, so D* = (1·y)/1 = y bit for bit; 1e-6 ≈ 8 ulps of |y| ≤ 1
    np.testing.assert_allclose(oracle.optimal_denoiser(x, 3.0, data[:1]), np.repeat(data[:1], 5, 0), atol=1e-6)


def test_conditional_restricts_to_class(rng):
    data = rng.uniform(-1, 1, (60, 4, 4, 3)).astype(np.float32)
    labels = np.arange(60) % 3
    x = rng.uniform(-1, 1, (9, 4, 4, 3)).astype(np.float32)
    q = np.arange(9) % 3
    out = oracle.conditional_optimal_denoiser(x, 0.7, q, data, labels, chunk=16)
    for b in range(9):
        ref = brute_force_denoiser(x[b:b + 1], 0.7, data[labels == q[b]])
        # matmul form at σ = 0.7 (no refit): the float32 bound over the class's points, 4e-6 … 5e-5 per query
        bound = matmul_form_error_bound(x[b:b + 1], 0.7, data[labels == q[b]])
        np.testing.assert_allclose(np.asarray(out[b]).reshape(1, -1), ref, rtol=0, atol=bound[0])
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
    # float64 (u = 1.1e-16): logits |l| ≤ 30, so both sides are within ~100·u·|l| ≈ 3e-13 relative; rtol 1e-8
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
    # float64 (the formulas are dtype-generic): the 6-term dots and squares give logit errors ≤ 20·u·|l|
    # (u = 1.1e-16, |l| ≤ 1.6e3) and the scipy reference's solves have condition ≤ (1 + σ²)/σ² = 401, so both
    # sides agree to ≲ 1e-11; float32 would only allow ≈ 2·18·u₃₂·‖x‖²/(2σ²(1 + σ²))·max|P_k x − D| ≈ 1e-4.
    with jax.enable_x64(True):
        for sigma in [0.05, 0.5, 2.0]:
            got = oracle.molrg_denoiser(jnp.asarray(x), sigma, jnp.asarray(bases), jnp.log(jnp.asarray(pi)))
            ref = gaussian_mixture_posterior_mean(x, sigma, [np.zeros(d)] * k, covs, pi)
            np.testing.assert_allclose(got, ref, rtol=0, atol=1e-9)
            mu, c = rng.standard_normal(d), 0.7
            got = oracle.gaussian_denoiser(jnp.asarray(x), sigma, jnp.asarray(mu), c)
            ref = gaussian_mixture_posterior_mean(x, sigma, [mu], [c ** 2 * np.eye(d)], [1.0])
            np.testing.assert_allclose(got, ref, rtol=0, atol=1e-9)


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
    # Two float32 oracles that differ in chunking and summation order: each is within the float32 bound of
    # the exact D* (matmul form or exact re-evaluation), so they differ by ≤ twice it, per query (numpy here,
    # same data and queries as the script).
    rng = np.random.default_rng(0)
    data = rng.uniform(-1, 1, (203, 4, 4, 3)).astype(np.float32)
    x = np.concatenate([data[:6] + 0.01 * rng.standard_normal((6, 4, 4, 3)),
                        rng.uniform(-1, 1, (4, 4, 4, 3))]).astype(np.float32)
    sigmas = [0.002, 0.05, 1.0, 80.0]
    bounds = [(2 * matmul_form_error_bound(x, s, data, exact_entries=True)).tolist() for s in sigmas]
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
        for sigma, bound in zip(SIGMAS, BOUNDS):
            a = np.asarray(den(x, sigma)); b = np.asarray(optimal_denoiser(x, sigma, data))
            gap = np.abs(a - b).reshape(len(x), -1).max(1)
            assert np.all(gap <= np.array(bound)), (sigma, gap.max(), (gap / np.array(bound)).max())
        print("OK")
    """).replace("SIGMAS", repr(sigmas)).replace("BOUNDS", repr(bounds))
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and "OK" in out.stdout, out.stderr[-3000:]

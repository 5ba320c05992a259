import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrepro import kernels, samplers
from jaxrepro.oracle import gaussian_denoiser, make_optimal_denoiser

MU, C = 0.3, 0.5


def gauss(x, sigma):
    return gaussian_denoiser(x, sigma, MU, C)


def exact_gaussian_flow(x0, s0, s1):
    """PF-ODE solution for N(μ, c²I) data: x(σ) − μ = (x(σ₀) − μ)·√((c²+σ²)/(c²+σ₀²))."""
    return MU + (x0 - MU) * np.sqrt((C ** 2 + s1 ** 2) / (C ** 2 + s0 ** 2))


def order(errors, steps):
    return -np.polyfit(np.log(steps), np.log(errors), 1)[0]


# Order windows (float64 throughout, so rounding, ≲ 1e-13, is far below the errors, ≥ 1e-4, on every machine):
# the error is C·hᵖ(1 + O(h)), so the fitted slope over n = 16…64 is p plus a pre-asymptotic term that halves
# with each doubling (measured local orders: VE-Euler 1.24, 1.12, 1.06 → fit 1.18, the largest; all others
# within 0.14). ±0.25 holds that term and still rejects the neighbouring orders p ± 1 by 0.75, e.g. a Heun
# that lost its correction (order 1) or an inversion without the odd-error cancellation (order 2, not 3).
ORDER_WINDOW = 0.25


def test_latents_are_a_pure_function_of_the_seed():
    full = np.asarray(samplers.latents_from_seeds(np.arange(10), (4, 4, 3)))
    part = np.asarray(samplers.latents_from_seeds([7, 3], (4, 4, 3)))
    np.testing.assert_array_equal(part, full[[7, 3]])
    # 480 N(0, 1) draws, fixed seeds: SE of the sample std = 1/√(2·480) = 0.032; 4 SE
    assert full.shape == (10, 4, 4, 3) and abs(full.std() - 1) < 4 / np.sqrt(2 * full.size)
    assert not np.allclose(full[0], full[1])
    with pytest.raises(ValueError, match="seeds"):
        samplers.latents_from_seeds([-1], (2,))


@pytest.mark.parametrize("solver,expected,kw", [
    ("euler", 1.0, {}), ("heun", 2.0, {}), ("dpmpp2m", 2.0, {}),
    ("heun", 2.0, dict(schedule="vp", scaling="vp")), ("euler", 1.0, dict(schedule="ve", scaling="none")),
])
def test_convergence_order_on_gaussian_data(solver, expected, kw):
    lat = np.asarray(samplers.latents_from_seeds(np.arange(8), (6,)), np.float64)
    steps = [16, 32, 64]
    with jax.enable_x64(True):
        errs = []
        for n in steps:
            sig = kernels.edm_sigmas(n, sigma_min=0.05, sigma_max=20.0)[:-1]
            out = samplers.sample(gauss, jnp.asarray(lat), sig, solver, dtype=jnp.float64, **kw)
            errs.append(np.abs(np.asarray(out) - exact_gaussian_flow(lat * 20.0, 20.0, 0.05)).max())
    assert abs(order(errs, steps) - expected) < ORDER_WINDOW, errs


def test_ddim_equals_classic_ddim_update():
    sig = kernels.vp_discretization(12)
    lat = np.asarray(samplers.latents_from_seeds(np.arange(4), (5,)), np.float64)
    with jax.enable_x64(True):
        got = np.asarray(samplers.sample(gauss, jnp.asarray(lat), sig, "ddim", dtype=jnp.float64))
        # classic DDIM (η = 0) in x_t = √ᾱ x̂ with ᾱ = 1/(1+σ²), started at x_T = √(1−ᾱ_T) ε
        abar = 1 / (1 + sig ** 2)
        x = np.sqrt(1 - abar[0]) * lat
        for i in range(len(sig) - 1):
            x0 = np.asarray(gauss(jnp.asarray(x / np.sqrt(abar[i])), sig[i]))
            eps = (x - np.sqrt(abar[i]) * x0) / np.sqrt(1 - abar[i])
            x = np.sqrt(abar[i + 1]) * x0 + np.sqrt(1 - abar[i + 1]) * eps
    # float64, two algebraically equal forms: ≲ 10 roundings per step × 12 steps ≈ 1e-14 relative (1 − ᾱ is
    # ≥ 0.5 on this grid: no cancellation); rtol 1e-10 leaves 1e4×
    np.testing.assert_allclose(got, x, rtol=1e-10, atol=1e-12)


def test_heun_uses_35_evaluations_for_18_steps():
    calls = []

    def counting(x, sigma):
        jax.debug.callback(lambda s: calls.append(float(s[0])), sigma)
        return gauss(x, sigma)
    samplers.sample(counting, jnp.zeros((2, 3)), kernels.edm_sigmas(18), "heun")
    assert len(calls) == 35 and min(calls) > 0


def test_oracle_sampling_reproduces_training_images(rng):
    data = rng.uniform(-1, 1, (32, 8, 8, 3)).astype(np.float32)
    den = make_optimal_denoiser(data)
    one = make_optimal_denoiser(data[:1])
    lat = samplers.latents_from_seeds(np.arange(64), (8, 8, 3))
    out = np.asarray(samplers.sample(one, lat[:4], kernels.edm_sigmas(18)))
    # D ≡ y exactly (one point); the last Euler step x − σ·(x − y)/σ returns y up to a few float32 roundings
    # of |x| ≈ |y| + 0.002·|ε| ≤ 1.01: ≤ 4 float32 eps ≈ 5e-7; 1e-5 leaves 20×
    np.testing.assert_allclose(out, np.repeat(data[:1], 4, 0), atol=1e-5)
    out = np.asarray(samplers.sample(den, lat, kernels.edm_sigmas(18), "heun"))
    dist = np.abs(out[:, None] - data[None]).max(axis=(2, 3, 4))       # [64, 32]
    # at σ_{N−1} = 0.002 the softmax gap to the second-nearest point is ≳ min‖y_i − y_j‖²/(8σ²) ≈ 1e6 logit units,
    # so the final Euler step returns D* = nearest y up to float32 rounding (≈ 1e-7); 1e-3 only tolerates
    # landing next to it, a point between two basins (a broken last step) is ~0.5 away
    assert dist.min(1).max() < 1e-3
    assert len(np.unique(dist.argmin(1))) > 10                          # many basins, not one


@pytest.mark.parametrize("solver,expected", [("euler", 1.0), ("heun", 3.0)])
def test_inversion_round_trip_falls_at_solver_order(solver, expected):
    """Heun's round trip gains an order: its leading local error ∝ h³ is odd in h and cancels."""
    lat = np.asarray(samplers.latents_from_seeds(np.arange(6), (5,)), np.float64)
    steps = [16, 32, 64]
    with jax.enable_x64(True):
        errs = []
        for n in steps:
            sig = kernels.edm_sigmas(n, sigma_min=0.05, sigma_max=20.0)[:-1]
            img = samplers.sample(gauss, jnp.asarray(lat), sig, solver, dtype=jnp.float64)
            back = samplers.invert(gauss, img, sig, solver, dtype=jnp.float64)
            errs.append(np.abs(np.asarray(back) - lat).max())
    assert abs(order(errs, steps) - expected) < ORDER_WINDOW, errs


def test_churn_is_a_seeded_negative_control():
    lat = samplers.latents_from_seeds(np.arange(4), (6,))
    sig = kernels.edm_sigmas(18)
    det = samplers.sample(gauss, lat, sig, "heun")
    zero = samplers.sample(gauss, lat, sig, "heun", churn=dict(S_churn=0.0), churn_seeds=np.arange(4))
    # Same arithmetic (γ = 0: ×1 and +0·noise are exact) in differently compiled float32 programs, which may
    # round (fuse, contract to FMA) differently: ≤ 1 ulp, EPS32·|x_i|, per rounding of size |x_i| ≈ |μ| + σ_i|ε|,
    # carried to σ = 0 by the flow's Jacobian √(c²/(c² + σ_i²)): ≤ EPS32·(c·max|ε| + |μ|) ≈ 1.6e-7 each;
    # ≤ 6 such roundings per Heun step × 18 steps → ≤ 1.8e-5 (observed: bitwise equal). Churn itself moves
    # samples by O(c) = 0.5 (asserted below).
    churn_atol = 2e-5
    np.testing.assert_allclose(zero, det, atol=churn_atol)
    churn = dict(S_churn=40.0, S_min=0.05, S_max=50.0)
    a = samplers.sample(gauss, lat, sig, "heun", churn=churn, churn_seeds=np.arange(4))
    b = samplers.sample(gauss, lat, sig, "heun", churn=churn, churn_seeds=np.arange(4) + 100)
    part = samplers.sample(gauss, lat[2:], sig, "heun", churn=churn, churn_seeds=np.arange(2, 4))
    # churn re-draws ≈ σ·1.0 of noise on σ ∈ [0.05, 50]: the endpoints are different draws of N(μ, c²), apart by
    # O(c) = 0.5 per coordinate (observed ≥ 1.6 over 24), so 0.05 is ≥ 10× below the effect
    assert np.abs(np.asarray(a - det)).max() > 0.05 and np.abs(np.asarray(a - b)).max() > 0.05
    np.testing.assert_allclose(part, a[2:], atol=churn_atol)     # batch 2 vs 4: same bound as above


def test_bad_arguments_are_refused():
    lat = jnp.zeros((2, 3))
    with pytest.raises(ValueError, match="solver"):
        samplers.sample(gauss, lat, kernels.edm_sigmas(5), "rk45")
    with pytest.raises(ValueError, match="decreasing"):
        samplers.sample(gauss, lat, [1.0, 2.0, 0.0])
    with pytest.raises(ValueError, match="> 0"):
        samplers.sample(gauss, lat, [1.0, -1.0, 0.0][:2] + [0.0])
    with pytest.raises(ValueError, match="float64"):
        samplers.sample(gauss, lat, kernels.edm_sigmas(5), dtype=jnp.float64)
    with pytest.raises(ValueError, match="inversion"):
        samplers.invert(gauss, lat, kernels.edm_sigmas(5)[:-1], "ddim")


def test_vp_schedule_on_the_edm_grid_ends_at_t_zero_and_converges():
    """EDM grid with its trailing σ = 0 under the vp time variable: t_N = 0 exactly (σ⁻¹(0) of the re-fit
    schedule is not 0 — β_min < 0 — and σ(t) there is NaN); Heun then converges at order 2 to the exact flow."""
    lat = np.asarray(samplers.latents_from_seeds(np.arange(8), (6,)), np.float64)
    steps, errs = [16, 32, 64], []
    with jax.enable_x64(True):
        for n in steps:
            out = np.asarray(samplers.sample(gauss, jnp.asarray(lat), kernels.edm_sigmas(n), "heun",
                                             schedule="vp", scaling="vp", dtype=jnp.float64))
            assert np.all(np.isfinite(out))
            errs.append(np.abs(out - exact_gaussian_flow(lat * 80.0, 80.0, 0.0)).max())
    assert abs(order(errs, steps) - 2.0) < ORDER_WINDOW, errs      # local orders 1.90, 1.99: fit 1.95


def _reference_vp_euler(lat, sig, lo, hi, eps_s=1e-3):
    """EDM's ablation sampler (vp schedule + vp scaling, Euler) written out in float64 numpy."""
    beta_d = 2 * (np.log(lo ** 2 + 1) / eps_s - np.log(hi ** 2 + 1)) / (eps_s - 1)
    beta_min = np.log(hi ** 2 + 1) - 0.5 * beta_d
    sigma = lambda t: np.sqrt(np.exp(0.5 * beta_d * t ** 2 + beta_min * t) - 1)          # noqa: E731
    dsigma = lambda t: 0.5 * (beta_min + beta_d * t) * (sigma(t) + 1 / sigma(t))         # noqa: E731
    s = lambda t: 1 / np.sqrt(1 + sigma(t) ** 2)                                         # noqa: E731
    ds = lambda t: -sigma(t) * dsigma(t) * s(t) ** 3                                     # noqa: E731
    t = (np.sqrt(beta_min ** 2 + 2 * beta_d * np.log1p(sig ** 2)) - beta_min) / beta_d
    t[-1] = 0.0
    x = lat * sigma(t[0]) * s(t[0])
    for i in range(len(t) - 1):
        tc = t[i]
        den = np.asarray(gauss(jnp.asarray(x / s(tc)), sigma(tc)))
        d = (dsigma(tc) / sigma(tc) + ds(tc) / s(tc)) * x - dsigma(tc) * s(tc) / sigma(tc) * den
        x = x + (t[i + 1] - tc) * d
    return x


def test_vp_schedule_is_refit_to_the_requested_range_not_the_grid_ends():
    """iDDPM grid: its ends (80.2, 0.0064) are not the requested [0.002, 81]; EDM re-fits β to the latter."""
    lat = np.asarray(samplers.latents_from_seeds(np.arange(8), (6,)), np.float64)
    sig = kernels.iddpm_discretization(12)
    with jax.enable_x64(True):
        got = np.asarray(samplers.sample(gauss, jnp.asarray(lat), sig, "euler", schedule="vp", scaling="vp",
                                         sigma_range=(0.002, 81.0), dtype=jnp.float64))
        ref = _reference_vp_euler(lat, sig.copy(), 0.002, 81.0)
        grid_fit = _reference_vp_euler(lat, sig.copy(), sig[-2], sig[0])
    # float64, same formulas: the worst rounding is the reference's exp(·) − 1 at σ_min = 0.0064, relative
    # u/σ² ≈ 3e-12 (observed 6e-13); rtol 1e-10 leaves ≥ 30×
    np.testing.assert_allclose(got, ref, rtol=1e-10, atol=1e-12)
    assert np.abs(ref - grid_fit).max() > 1e-4      # the two fits differ by 8.6e-4, ≫ the 1e-12 agreement above


def test_sampling_range_defaults_and_clamps_to_the_network():
    assert kernels.sampling_range("edm") == (0.002, 80.0)
    assert kernels.sampling_range("iddpm") == (0.002, 81.0)
    # σ_VP(1e-3), σ_VP(1) as 5–6 digit literals: rounding ≤ 5e-5 relative
    np.testing.assert_allclose(kernels.sampling_range("vp"), [0.010486, 152.167], rtol=1e-4)
    assert kernels.sampling_range("edm", net_range=(0.02, 100.0)) == (0.02, 80.0)       # a VE network
    assert kernels.sampling_range("ve", 0.001, 500.0, net_range=(0.02, 100.0)) == (0.02, 100.0)
    with pytest.raises(ValueError, match="unknown discretization 'ddim'"):
        kernels.sampling_range("ddim")

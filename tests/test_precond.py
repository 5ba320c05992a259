import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrepro import kernels, samplers
from jaxrepro.oracle import gaussian_denoiser
from jaxrepro.precond import Precond, make_denoiser


def test_edm_preconditioning_gives_unit_variance_input_and_target(rng):
    """EDM §B.6: with y ~ N(0, σ_data²), Var(c_in(y+n)) = 1 and Var((y − c_skip(y+n))/c_out) = 1."""
    pc = Precond("edm")
    y = 0.5 * rng.standard_normal(200_000)
    for sigma in [0.01, 0.3, 2.0, 50.0]:
        x = y + sigma * rng.standard_normal(y.shape)
        c_skip, c_out, c_in, _ = (float(c) for c in pc.coefficients(jnp.float32(sigma)))
        # fixed seed, n = 2e5 Gaussian draws: SE of a sample variance ≈ √(2/n) = 3.2e-3, so 0.02 = 6 SE; the
        # float32 coefficients add ≤ 1e-6 relative
        assert abs(np.var(c_in * x) - 1) < 0.02
        assert abs(np.var((y - c_skip * x) / c_out) - 1) < 0.02


def test_vp_ve_coefficients_follow_table_1():
    t = np.array([0.1, 0.5, 0.9])
    sigma = kernels.vp_sigma(t)
    c_skip, c_out, c_in, c_noise = Precond("vp").coefficients(jnp.asarray(sigma, jnp.float32))
    # float32 from a float64 σ (rounded once, u = 6e-8): σ⁻¹ (log1p, √, − β_min: ≤ 2× cancellation at t = 0.1)
    # ≲ 20u; 1/√(σ² + 1) ≤ 4.5u; −σ ≤ u. rtols 1e-4 / 1e-6 / 1e-6 hold those with ≥ 3×
    np.testing.assert_allclose(c_noise, 999 * t, rtol=1e-4)
    np.testing.assert_allclose(c_in, 1 / np.sqrt(1 + sigma ** 2), rtol=1e-6)
    np.testing.assert_allclose(c_out, -sigma, rtol=1e-6)
    _, c_out, c_in, c_noise = Precond("ve").coefficients(jnp.asarray([0.02, 2.0, 100.0]))
    np.testing.assert_allclose(c_noise, np.log([0.01, 1.0, 50.0]), rtol=1e-5)   # log(0.5·2.0) = log 1 = 0 exactly
    np.testing.assert_allclose(c_out, [0.02, 2.0, 100.0])
    assert Precond("ve").sigma_range == (0.02, 100.0)
    np.testing.assert_allclose(Precond("vp").sigma_range, [0.0010005, 152.17], rtol=1e-3)   # 5-digit literals


def test_iddpm_rounds_sigma_and_uses_first_channels():
    pc = Precond("iddpm")
    u = pc.u
    np.testing.assert_allclose(pc.sigma_range, [0.00643, 20291], rtol=1e-3)      # 0.00643: ±7.8e-4 rel. literal
    sig = jnp.asarray([u[10] * 1.0001, u[500], u[998] * 0.9999], jnp.float32)
    np.testing.assert_allclose(pc.round_sigma(sig), u[[10, 500, 998]], rtol=1e-6)
    np.testing.assert_array_equal(pc.coefficients(sig)[3], [989, 499, 1])

    def net(params, x, c_noise, labels, train):          # ε in the first C channels, junk after
        return jnp.concatenate([params * x, 1e6 * jnp.ones_like(x)], axis=-1)
    den = make_denoiser(net, jnp.float32(0.0), "iddpm")
    x = jnp.ones((3, 2, 2, 3))
    np.testing.assert_allclose(den(x, sig), x)            # F = 0 → D = c_skip x = x


def test_iddpm_rounds_sigma_for_c_noise_only_and_over_all_of_u():
    """As EDM's iDDPMPrecond: c_skip, c_out, c_in use the σ given; round_sigma searches u_0..u_M (u_M = 0)."""
    pc = Precond("iddpm")
    sig = jnp.asarray([pc.u[10] * 1.0001, 1e-6], jnp.float32)
    c_skip, c_out, c_in, c_noise = pc.coefficients(sig)
    np.testing.assert_allclose(c_out, -np.asarray(sig), rtol=1e-7)                    # not −u[10]
    np.testing.assert_allclose(c_in, 1 / np.sqrt(np.asarray(sig, np.float64) ** 2 + 1), rtol=1e-6)
    np.testing.assert_array_equal(c_noise, [989, -1])                                  # M − 1 − M for σ ≈ 0
    np.testing.assert_array_equal(pc.round_sigma(sig)[1], 0.0)

    def net(params, xin, c_noise, labels, train):        # F = c_in x in the first C channels
        return jnp.concatenate([xin, xin], axis=-1)
    x = jnp.ones((2, 2, 2, 1))
    expect = 1 - np.asarray(sig, np.float64) / np.sqrt(np.asarray(sig, np.float64) ** 2 + 1)   # x − σ c_in x
    # x − σ c_in x cancels two O(1) float32 numbers: σ², +1, √, 1/·, ×σ round once each (≤ 4.5u = 2.7e-7 of
    # σ·c_in ≈ 1) and the subtraction is exact (Sterbenz): ≤ 2.7e-7 < 5e-7. Looser would not see σ = 1e-6
    # being rounded to u_M = 0 (an error of 1e-6)
    np.testing.assert_allclose(make_denoiser(net, None, "iddpm")(x, sig)[:, 0, 0, 0], expect, rtol=0, atol=5e-7)


def test_ideal_network_reproduces_the_optimal_denoiser_through_a_sampler():
    """F* = (D* − c_skip x)/c_out written from c_in x and c_noise alone recovers D* for every kind."""
    mu, c = 0.2, 0.5
    for kind in ["vp", "ve", "edm"]:
        pc = Precond(kind)

        def net(params, xin, c_noise, labels, train, pc=pc):
            # invert c_noise → σ by the kind's own definition, then emit the ideal F
            sigma = {"vp": lambda: kernels.vp_sigma(c_noise / 999.0), "ve": lambda: 2 * jnp.exp(c_noise),
                     "edm": lambda: jnp.exp(4 * c_noise)}[kind]()
            c_skip, c_out, c_in, _ = pc.coefficients(sigma)
            x = xin / c_in[:, None]
            return (gaussian_denoiser(x, sigma, mu, c) - c_skip[:, None] * x) / c_out[:, None]
        den = make_denoiser(net, {}, kind)
        lat = samplers.latents_from_seeds(np.arange(3), (4,))
        sig = kernels.edm_sigmas(8, sigma_min=0.05, sigma_max=20.0)
        # float64 (precond and sampler are dtype-generic): the σ → c_noise → σ round trip and
        # F = (D − c_skip x)/c_out → c_skip x + c_out F cancel |x| ≈ σ|ε| ≤ 60 against D ≈ 0.3, so each D errs by
        # ≲ 100·u·|x| (u = 1.1e-16; the vp round trip's condition is ≈ 6); over 8 steps that is < 1e-11
        # (float32 would give ≈ 60·K·6e-8 per step, the old 2e-4). A wrong coefficient errs by O(0.1).
        with jax.enable_x64(True):
            lat64 = jnp.asarray(lat, jnp.float64)
            a = samplers.sample(den, lat64, sig, dtype=jnp.float64)
            b = samplers.sample(lambda x, s: gaussian_denoiser(x, s, mu, c), lat64, sig, dtype=jnp.float64)
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-9)


def test_unknown_kind_is_refused():
    with pytest.raises(ValueError, match="allowed: vp, ve, edm, iddpm"):
        Precond("ddpm")

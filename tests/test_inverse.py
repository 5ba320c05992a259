"""Inverse problems (operators, deterministic DPS) and ODE encodings against independent references."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import ndimage

from jaxrepro.inverse import (box_inpainting, decode, dps_sample, encode, encoding_agreement, gaussian_blur,
                              make_operator, super_resolution)
from jaxrepro.oracle import gaussian_denoiser, make_optimal_denoiser
from jaxrepro.samplers import edm_sigmas, latents_from_seeds, sample

EPS32 = np.finfo(np.float32).eps


def test_operators_match_numpy_and_scipy(rng):
    x = rng.uniform(-1, 1, (3, 8, 6, 2)).astype(np.float32)
    mask = np.ones((8, 6, 2), np.float32)
    mask[2:5, 1:4] = 0
    np.testing.assert_array_equal(box_inpainting((8, 6, 2), 2, 1, 3, 3)(x), x * mask)
    pooled = np.array([[[[x[b, 2 * i:2 * i + 2, 2 * j:2 * j + 2, c].mean() for c in range(2)] for j in range(3)]
                        for i in range(4)] for b in range(3)])
    np.testing.assert_allclose(super_resolution((8, 6, 2))(x), pooled, atol=4 * EPS32)
    # scipy's mode="reflect" is (d c b a | a b c d), numpy's "symmetric"; a sum of 9·9 terms ≤ 1 in float32
    ref = ndimage.gaussian_filter(x.astype(np.float64), sigma=(0, 1.0, 1.0, 0), mode="reflect", truncate=4.0)
    np.testing.assert_allclose(gaussian_blur(1.0)(jnp.asarray(x)), ref, atol=81 * EPS32)
    with pytest.raises(ValueError, match="must lie inside"):
        box_inpainting((8, 8, 1), 6, 0, 4, 4)
    with pytest.raises(ValueError, match="unknown operator"):
        make_operator("jpeg", (8, 8, 1))


def test_zero_step_size_is_the_euler_ode_sampler(rng):
    data = rng.uniform(-1, 1, (16, 4, 4, 1)).astype(np.float32)
    oracle = make_optimal_denoiser(data)
    lat = latents_from_seeds(np.arange(8), (4, 4, 1))
    op = make_operator("sr2", (4, 4, 1))
    x, res = dps_sample(oracle, lat, edm_sigmas(12), op, jnp.zeros((8, 2, 2, 1)), 0.0)
    ref = sample(oracle, lat, edm_sigmas(12), "euler")
    # same steps, differently rounded ((x − D)/σ vs x/σ − D/σ): ≲ 12 steps × 80 (|x| at σ_max) × eps
    np.testing.assert_allclose(x, ref, atol=12 * 80 * EPS32)
    np.testing.assert_allclose(res, np.linalg.norm(np.asarray(op(ref)).reshape(8, -1), axis=1), rtol=1e-5)


@pytest.mark.parametrize("name", ["inpaint", "sr2"])
def test_dps_matches_a_float64_reference_with_the_closed_form_gradient(rng, name):
    """Gaussian data N(μ, c²I): D = μ + k(x − μ), k = c²/(c² + σ²), so ∇‖z − A D‖² = −2k Aᵀ(z − A D)."""
    mu, c, shape, zeta = 0.1, 0.5, (4, 4, 1), 0.5
    denoise = jax.tree_util.Partial(gaussian_denoiser, mu=jnp.float32(mu), c=jnp.float32(c))
    op = make_operator(name, shape)
    at = {"inpaint": lambda r: r * np.asarray(op(jnp.ones((1, *shape))))[0],
          "sr2": lambda r: np.repeat(np.repeat(r, 2, axis=1), 2, axis=2) / 4}[name]
    truth = (mu + c * rng.standard_normal((6, *shape))).astype(np.float32)
    z = np.asarray(op(jnp.asarray(truth)), np.float64)
    lat = latents_from_seeds(np.arange(6), shape)
    sig = edm_sigmas(10)
    x, res = dps_sample(denoise, lat, sig, op, z, zeta)
    xr = np.asarray(lat, np.float64) * sig[0]
    for s, s_next in zip(sig[:-1], sig[1:]):
        k = c ** 2 / (c ** 2 + s ** 2)
        d = mu + k * (xr - mu)
        r = z - np.asarray(op(jnp.asarray(d, jnp.float32)), np.float64)   # A is linear: float32 A of d, exact enough
        norm = np.sqrt((r.reshape(6, -1) ** 2).sum(1)).reshape(-1, 1, 1, 1)
        grad = -2 * k * at(r)
        xr = xr + (s_next - s) * (xr - d) / s - zeta * (1 + s ** 2) / norm * grad
    # float32 rounding of |x| ≤ 80·4 carried through 10 steps whose Jacobians are contractions (|1 − h/σ| ≤ 1)
    np.testing.assert_allclose(x, xr, atol=10 * 320 * EPS32)
    assert np.all(np.asarray(res) < 0.5 * np.linalg.norm(z.reshape(6, -1), axis=1))   # guidance fits z


def test_dps_with_the_oracle_recovers_the_training_image_behind_the_measurement(rng):
    """Memorization: z = A(y_3) for a training image y_3 ⇒ the posterior is a point mass on y_3."""
    data = rng.uniform(-1, 1, (8, 8, 8, 1)).astype(np.float32)
    oracle = make_optimal_denoiser(data)
    lat = latents_from_seeds(np.arange(16), (8, 8, 1))
    for name in ("inpaint", "sr2", "blur"):
        op = make_operator(name, (8, 8, 1))
        z = op(jnp.asarray(np.repeat(data[3:4], 16, 0)))
        x, res = dps_sample(oracle, lat, edm_sigmas(18), op, z, 4.0)
        err = np.sqrt(((np.asarray(x)[:, None] - data[None]) ** 2).reshape(16, 8, -1).mean(-1))   # [16, 8]
        assert np.all(err.argmin(1) == 3) and err[:, 3].max() < 1e-3, (name, err.argmin(1))
        assert np.asarray(res).max() < 1e-3
        x0, _ = dps_sample(oracle, lat, edm_sigmas(18), op, z, 0.0)      # without guidance: any image
        nearest = np.sqrt(((np.asarray(x0)[:, None] - data[None]) ** 2).reshape(16, 8, -1).sum(-1)).argmin(1)
        assert np.mean(nearest == 3) < 0.5


def test_encodings_converge_at_heun_order_to_the_closed_form_flow(rng):
    """N(μ, c²I): x(σ) − μ ∝ √(c² + σ²) exactly; Heun's error falls 4× per halving (order 2), the round
    trip's 8× (order 3: the leading local error is odd in h and cancels on the way back)."""
    mu, c = 0.1, 0.5
    denoise = jax.tree_util.Partial(gaussian_denoiser, mu=jnp.float32(mu), c=jnp.float32(c))
    x = (mu + c * rng.standard_normal((8, 4, 4, 1))).astype(np.float32)
    enc_err, trip_err = [], []
    for n in (32, 64):
        sig = edm_sigmas(n)[:-1]
        exact = (mu + (x - mu) * np.sqrt(c ** 2 + sig[0] ** 2) / np.sqrt(c ** 2 + sig[-1] ** 2)) / sig[0]
        z = encode(denoise, x, sig)
        enc_err.append(np.abs(np.asarray(z) - exact).max())
        trip_err.append(np.abs(np.asarray(decode(denoise, z, sig)) - x).max())
    assert enc_err[0] / enc_err[1] > 3 and trip_err[0] / trip_err[1] > 6, (enc_err, trip_err)
    assert enc_err[1] < 0.02 and trip_err[1] < 1e-3


def test_encoding_agreement(rng):
    z = rng.standard_normal((16, 64)).astype(np.float32)
    same, chance = encoding_agreement(z, z)
    np.testing.assert_allclose(same["cosine"], 1, atol=1e-6)
    np.testing.assert_allclose(same["rel_l2"], 0, atol=1e-6)
    # unrelated unit Gaussians in 64 dims: cosine ~ N(0, 1/64), |cos| < 6/8 with overwhelming probability
    assert np.all(np.abs(chance["cosine"]) < 0.75) and np.all(chance["rel_l2"] > 0.5)


def test_bad_dps_inputs_are_refused_before_compute():
    oracle = make_optimal_denoiser(np.zeros((2, 4, 4, 1), np.float32))
    lat = latents_from_seeds(np.arange(2), (4, 4, 1))
    op = make_operator("sr2", (4, 4, 1))
    with pytest.raises(ValueError, match=r"measurement has shape \(2, 4, 4, 1\), the operator gives \(2, 2, 2, 1\)"):
        dps_sample(oracle, lat, edm_sigmas(4), op, jnp.zeros((2, 4, 4, 1)), 0.1)
    with pytest.raises(ValueError, match="step_size must be"):
        dps_sample(oracle, lat, edm_sigmas(4), op, jnp.zeros((2, 2, 2, 1)), -1.0)

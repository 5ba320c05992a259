"""Denoiser Jacobians from batched jvps against closed forms, float64 finite differences and reverse mode."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import brute_force_denoiser

from jaxrepro.jacobian import jacobian, numerical_rank, singular_values, spectra
from jaxrepro.models import ModelApply, get_model, init_params
from jaxrepro.oracle import make_optimal_denoiser
from jaxrepro.precond import make_denoiser

EPS32 = float(np.finfo(np.float32).eps)
SHAPE = (4, 4, 1)
D = 16


def _linear(m, b, x, sigma):
    return (x.reshape(len(x), -1) @ m.T + b).reshape(x.shape)


def test_linear_denoiser_gives_its_matrix_and_singular_values(rng):
    m = rng.standard_normal((D, D)).astype(np.float32)
    fn = jax.tree_util.Partial(_linear, jnp.asarray(m), jnp.ones(D))
    x = rng.standard_normal(SHAPE).astype(np.float32)
    for chunk in (5, 16, 64):                          # a chunk that does not divide d, one equal, one larger
        np.testing.assert_allclose(jacobian(fn, x, 0.5, chunk), m, atol=D * EPS32 * np.abs(m).max())
    np.testing.assert_allclose(singular_values(fn, x, 0.5, 5), np.linalg.svd(m.astype(np.float64), compute_uv=False),
                               rtol=1e-5)


def test_network_jacobian_matches_reverse_mode(rng):
    model = get_model("mlp_tiny")
    fn = make_denoiser(ModelApply(model), init_params(model, SHAPE, 0), "edm")
    x = rng.standard_normal(SHAPE).astype(np.float32)
    rev = jax.jacrev(lambda v: fn(v.reshape(1, *SHAPE), jnp.full((1,), 0.7)).reshape(-1))(jnp.asarray(x).reshape(-1))
    # forward and reverse mode sum the same products in different orders: ≤ (width + d) eps relative
    np.testing.assert_allclose(jacobian(fn, x, 0.7, chunk=6), rev, atol=(64 + D) * EPS32 * float(jnp.abs(rev).max()))


def fd_jacobian(x, sigma, data):
    """float64 central differences of the brute-force D*; step h = 1e-4 σ (truncation ~ (h/σ)² ≈ 1e-8 relative)."""
    x = np.asarray(x, np.float64).reshape(-1)
    h = 1e-4 * sigma
    cols = [(brute_force_denoiser((x + h * e)[None], sigma, data)[0]
             - brute_force_denoiser((x - h * e)[None], sigma, data)[0]) / (2 * h) for e in np.eye(x.size)]
    return np.stack(cols, 1)


@pytest.mark.parametrize("sigma", [0.3, 1.0, 5.0])
def test_oracle_jacobian_matches_float64_finite_differences(rng, sigma):
    data = rng.uniform(-1, 1, (12, *SHAPE)).astype(np.float32)
    x = data[2] + 0.5 * sigma * rng.standard_normal(SHAPE).astype(np.float32)
    fd = fd_jacobian(x, sigma, data)
    # exact J = (Σ w y yᵀ − D Dᵀ)/σ²: each term carries float32 relative error ≤ N eps, |y| ≤ 1
    atol = 2 * 12 * EPS32 / sigma ** 2 + 1e-6 * np.abs(fd).max()
    np.testing.assert_allclose(jacobian(make_optimal_denoiser(data), x, sigma, chunk=5), fd, atol=atol)


def test_oracle_jacobian_vanishes_near_a_training_point_at_small_sigma(rng):
    """One weight is 1 and the rest underflow (‖y_j − y_k‖² ≥ 1 ≫ 2σ²·100), so J = Cov_w/σ² = 0 exactly;
    float32 leaves the cancellation dp_k y_k − y_k dp_k: ≤ 2 eps |y| |∂l_k| d, |∂l_k| ≤ ‖x − y_k‖_∞ / σ²."""
    data = rng.uniform(-1, 1, (12, *SHAPE)).astype(np.float32)
    flat = data.reshape(12, -1).astype(np.float64)
    assert min(((flat[i] - flat[j]) ** 2).sum() for i in range(12) for j in range(i)) >= 1
    oracle = make_optimal_denoiser(data)
    for sigma in (0.002, 0.02):
        x = data[5] + 0.5 * sigma * rng.standard_normal(SHAPE).astype(np.float32)
        bound = 2 * EPS32 * D * np.abs(x - data[5]).max() / sigma ** 2
        assert np.abs(np.asarray(jacobian(oracle, x, sigma))).max() <= bound
        assert numerical_rank(singular_values(oracle, x, sigma)) <= 1    # 0, or 1 from rounding


def test_oracle_jacobian_at_large_sigma_is_the_data_covariance_over_sigma_squared(rng):
    """Theorem 1 at large σ: w_i = (1 + ε_i)/N with |ε_i| ≤ η = e^δ − 1, δ the logit spread, hence
    ‖σ² J − Cov‖_F ≤ η M₂ (3 + 2η), M₂ = mean ‖y_i‖² (Cov with 1/N)."""
    data = rng.uniform(-1, 1, (12, *SHAPE)).astype(np.float32)
    y = data.reshape(12, -1).astype(np.float64)
    x = data[0]
    sigma = 80.0
    d2 = ((x.reshape(-1) - y) ** 2).sum(1)
    eta = np.expm1((d2.max() - d2.min()) / (2 * sigma ** 2))
    m2 = (y ** 2).sum(1).mean()
    cov = np.cov(y.T, bias=True)
    got = sigma ** 2 * np.asarray(jacobian(make_optimal_denoiser(data), x, sigma), np.float64)
    assert np.linalg.norm(got - cov) <= eta * m2 * (3 + 2 * eta)
    assert eta * m2 * (3 + 2 * eta) < 0.1 * np.linalg.norm(cov)          # the bound is tight enough to mean something
    np.testing.assert_allclose(singular_values(make_optimal_denoiser(data), x, sigma) * sigma ** 2,
                               np.linalg.eigvalsh(cov)[::-1], atol=eta * m2 * (3 + 2 * eta))


def test_numerical_rank_and_spectra(rng):
    assert numerical_rank([3.0, 2.0, 1.0, 0.1]) == 3       # energies 9, 4, 1, 0.01: 13/14.01 < 0.99 ≤ 14/14.01
    assert numerical_rank([0.1, 1.0, 3.0, 2.0]) == 3 and numerical_rank([1.0, 2.0], energy=1.0) == 2
    assert numerical_rank(np.zeros(5)) == 0 and numerical_rank(np.ones(7)) == 7
    with pytest.raises(ValueError, match="energy"):
        numerical_rank([1.0], energy=0)
    m = np.diag(np.arange(1, D + 1, dtype=np.float32))
    fn = jax.tree_util.Partial(_linear, jnp.asarray(m), jnp.zeros(D))
    svals, ranks = spectra(fn, rng.standard_normal((2, *SHAPE)).astype(np.float32), [0.1, 1.0])
    assert svals.shape == (2, 2, D) and np.all(ranks == numerical_rank(np.arange(1, D + 1)))

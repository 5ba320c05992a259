import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrepro import kernels


# Everything here runs in float64 (u = 1.1e-16) through well-conditioned closed forms (expm1/log1p avoid the
# cancellations; the worst, √(β_min² + 2β_d·log1p(σ²)) − β_min, loses < 1 digit): errors are ≲ 1e-14 relative
# on any machine, so rtol 1e-10…1e-12 leave ≥ 1e2×. Looser tolerances compare against rounded literals and
# are set by the literal's last digit, as noted.
@pytest.fixture(autouse=True)
def x64():
    with jax.enable_x64(True):
        yield


@pytest.mark.parametrize("name", ["vp", "ve", "linear"])
def test_schedule_derivative_and_inverse(name):
    sched = kernels.make_schedule(name)
    t = jnp.linspace(0.01, 1.0, 23, dtype=jnp.float64)
    np.testing.assert_allclose(jax.vmap(jax.grad(sched.sigma))(t), sched.sigma_deriv(t), rtol=1e-10)
    np.testing.assert_allclose(sched.sigma_inv(sched.sigma(t)), t, rtol=1e-10)


@pytest.mark.parametrize("name", ["vp", "ve", "linear"])
def test_vp_scaling_derivative(name):
    sched = kernels.make_schedule(name)
    scal = kernels.make_scaling("vp", sched)
    t = jnp.linspace(0.02, 1.0, 17, dtype=jnp.float64)
    np.testing.assert_allclose(jax.vmap(jax.grad(scal.s))(t), scal.s_deriv(t), rtol=1e-10)
    none = kernels.make_scaling("none", sched)
    assert np.all(none.s(t) == 1) and np.all(none.s_deriv(t) == 0)


def test_vp_marginal_mean_matches_score_sde():
    # score-SDE's VPSDE(beta_min=0.1, beta_max=20): mean factor exp(−¼t²(β_max−β_min) − ½tβ_min)
    t = np.linspace(1e-5, 1.0, 50)
    scal = kernels.make_scaling("vp", kernels.make_schedule("vp"))
    np.testing.assert_allclose(scal.s(t), np.exp(-0.25 * t ** 2 * (20 - 0.1) - 0.5 * t * 0.1), rtol=1e-12)


def test_edm_grid():
    sig = kernels.edm_sigmas(18)
    assert sig.shape == (19,) and sig[-1] == 0
    np.testing.assert_allclose([sig[0], sig[-2]], [80.0, 0.002], rtol=1e-12)
    np.testing.assert_allclose(np.diff(np.diff(sig[:-1] ** (1 / 7))), 0, atol=1e-12)  # linear in σ^{1/ρ}


def test_vp_grid_and_refit():
    sig = kernels.vp_discretization(18)
    np.testing.assert_allclose(sig[-2], 0.0104870, rtol=1e-4)         # σ_VP(ε_s = 1e-3); literal ±5e-8 = 5e-6 rel.
    np.testing.assert_allclose(sig[0], kernels.vp_sigma(1.0), rtol=1e-12)
    beta_d, beta_min = kernels.vp_betas_for_range(0.05, 50.0)
    np.testing.assert_allclose(kernels.vp_sigma(np.array([1e-3, 1.0]), beta_d, beta_min), [0.05, 50.0], rtol=1e-10)
    refit = kernels.vp_discretization(10, 0.05, 50.0)
    t = 1 + np.arange(10) / 9 * (1e-3 - 1)
    np.testing.assert_allclose(refit[:-1], kernels.vp_sigma(t, beta_d, beta_min), rtol=1e-12)


def test_ve_grid_is_geometric():
    sig = kernels.ve_discretization(12)
    np.testing.assert_allclose([sig[0], sig[-2]], [100.0, 0.02], rtol=1e-12)
    np.testing.assert_allclose(np.diff(np.log(sig[:-1])), np.log(0.02 / 100) / 11, rtol=1e-10)


def test_iddpm_grid_matches_paper():
    u = kernels.iddpm_u()
    assert u[-1] == 0 and np.all(np.diff(u) < 0)
    np.testing.assert_allclose(u[0], 20291, rtol=1e-4)          # literal ±0.5 = 2.5e-5 relative
    np.testing.assert_allclose(u[999], 0.00643, rtol=1e-3)      # literal ±5e-6 = 7.8e-4 relative (u[999] = 0.0064254)
    sig = kernels.iddpm_discretization(18)
    assert sig[0] <= 81 and sig[-2] >= 0.002 and set(sig[:-1]) <= set(u)


@pytest.mark.parametrize("bad", [dict(name="cosine", num_steps=10), dict(name="edm", num_steps=1)])
def test_bad_grid_arguments(bad):
    with pytest.raises(ValueError, match="cosine|num_steps"):
        kernels.sigma_grid(**bad)
    with pytest.raises(ValueError, match="sigma_min"):
        kernels.edm_sigmas(10, sigma_min=0.0)
    with pytest.raises(ValueError, match="schedule"):
        kernels.make_schedule("cosine")

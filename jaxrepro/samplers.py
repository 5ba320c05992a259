"""Probability-flow ODE integrators over a σ grid, latents from seeds, and ODE inversion.

Every denoiser is a callable D(x, σ) in EDM space (s = 1; labels and guidance bound in).
The ODE (EDM eq. 4, PAPER.md §4) for x = s(t)·x̂:
    dx/dt = (σ̇/σ + ṡ/s) x − (σ̇ s/σ) D(x/s; σ(t)).
The grid is given in σ; t_i = σ⁻¹(σ_i). Results are returned in EDM space x̂ = x / s.
"""
import dataclasses
import functools
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxrepro.kernels import (VP_EPS_S, edm_sigmas, make_scaling, make_schedule,  # noqa: F401
                              vp_betas_for_range)

SOLVERS = ("euler", "heun", "ddim", "dpmpp2m")


def latents_from_seeds(seeds, shape, dtype=jnp.float32):
    """[len(seeds), *shape] unit Gaussians; row i depends on seeds[i] only."""
    seeds = np.asarray(seeds)
    if seeds.ndim != 1 or not np.issubdtype(seeds.dtype, np.integer) or np.any(seeds < 0):
        raise ValueError(f"seeds must be a 1-D array of non-negative integers, got {seeds!r}")
    keys = jax.vmap(jax.random.PRNGKey)(jnp.asarray(seeds, jnp.uint32))
    return jax.vmap(lambda k: jax.random.normal(k, tuple(shape), dtype))(keys)


def check_sigmas(sigmas, allow_zero_end=True):
    """σ grid as float64 numpy: strictly decreasing, positive (a trailing 0 allowed)."""
    sig = np.asarray(sigmas, dtype=np.float64)
    if sig.ndim != 1 or sig.size < 2:
        raise ValueError(f"sigmas must be a 1-D grid of >= 2 values, got shape {sig.shape}")
    body = sig[:-1] if allow_zero_end else sig
    if np.any(body <= 0) or sig[-1] < 0 or (not allow_zero_end and sig[-1] <= 0):
        raise ValueError(f"sigmas must be > 0 (a trailing 0 allowed: {allow_zero_end}), got {sig}")
    if np.any(np.diff(sig) >= 0):
        raise ValueError(f"sigmas must be strictly decreasing, got {sig}")
    return sig


def _ode_parts(schedule, scaling, sigmas, eps_s, sigma_range):
    """Schedule and scaling objects; a vp schedule is re-fit to sigma_range (EDM), default the grid's."""
    if schedule == "vp":
        pos = sigmas[sigmas > 0]
        lo, hi = (float(pos.min()), float(pos.max())) if sigma_range is None else sigma_range
        beta_d, beta_min = vp_betas_for_range(lo, hi, eps_s)
        sched = make_schedule("vp", beta_d, beta_min)
    else:
        sched = make_schedule(schedule)
    return sched, make_scaling(scaling, sched)


def _wrap(denoise_fn):
    """Make denoise_fn a pytree that jit can take (plain callables become static)."""
    leaves = jax.tree_util.tree_leaves(denoise_fn)
    if all(isinstance(leaf, (jax.Array, np.ndarray)) for leaf in leaves) and leaves:
        return denoise_fn
    return jax.tree_util.Partial(denoise_fn)


def sample(denoise_fn, latents, sigmas, solver="heun", *, schedule="linear", scaling="none",
           eps_s=VP_EPS_S, sigma_range=None, churn=None, churn_seeds=None, dtype=None):
    """Integrate the PF-ODE from x̂_0 = latents·σ_0 down the grid; return x̂ at sigmas[-1].

    denoise_fn(x [B, ...], σ [B]) → D; latents [B, ...] unit Gaussians; sigmas a decreasing grid
    (a trailing 0 allowed). solver ∈ {euler, heun, ddim, dpmpp2m}; schedule ∈ {linear, vp, ve}
    and scaling ∈ {none, vp} pick the time variable (EDM's ablation sampler; ddim and dpmpp2m
    work in σ and ignore them); a vp schedule is re-fit to sigma_range = (σ_min, σ_max), the range
    that was asked for (kernels.sampling_range), by default the grid's. churn = dict(S_churn, S_min, S_max, S_noise) adds EDM's
    stochastic noise (needs churn_seeds [B]); dtype=jnp.float64 integrates in double precision.
    """
    return _run(denoise_fn, latents, check_sigmas(sigmas), solver, schedule, scaling, eps_s, sigma_range,
                churn, churn_seeds, dtype, invert=False)


def invert(denoise_fn, images, sigmas, solver="heun", *, schedule="linear", scaling="none",
           eps_s=VP_EPS_S, sigma_range=None, dtype=None):
    """ODE inversion: images at σ = min(sigmas) > 0 → latents (x̂ at max(sigmas) divided by σ_max)."""
    sig = check_sigmas(sigmas, allow_zero_end=False)
    if solver not in ("euler", "heun"):
        raise ValueError(f"inversion supports solver euler or heun, got {solver!r}")
    return _run(denoise_fn, images, sig, solver, schedule, scaling, eps_s, sigma_range, None, None, dtype,
                invert=True)


def _run(denoise_fn, x, sig, solver, schedule, scaling, eps_s, sigma_range, churn, churn_seeds, dtype, invert):
    if solver not in SOLVERS:
        raise ValueError(f"unknown solver {solver!r}; allowed: {', '.join(SOLVERS)}")
    if churn is not None and churn_seeds is None:
        raise ValueError("churn needs churn_seeds (one integer per sample) for its noise")
    if churn is not None and solver in ("ddim", "dpmpp2m"):
        raise ValueError("churn is defined for euler and heun only")
    if dtype is not None and jnp.dtype(dtype) == jnp.float64 and not jax.config.jax_enable_x64:
        raise ValueError("dtype=float64 needs 64-bit JAX: run inside `with jax.enable_x64(True):`")
    if solver in ("ddim", "dpmpp2m"):
        schedule, scaling = "linear", "none"
    sched, scal = _ode_parts(schedule, scaling, sig, eps_s, sigma_range)
    t = sched.sigma_inv(sig)                                         # float64 numpy grid
    if sig[-1] == 0:       # t_N = 0 exactly (EDM): a re-fit vp σ⁻¹(0) need not be 0 (β_min < 0)
        t[-1] = 0.0
    if invert:
        t = t[::-1].copy()
    dtype = dtype or jnp.asarray(x).dtype
    x = jnp.asarray(x, dtype)
    settings = _Settings(sched.name, sched.params, scal.name, solver, invert, bool(sig[-1] == 0),
                         None if churn is None else tuple(sorted(churn.items())))
    seeds = None if churn_seeds is None else jnp.asarray(churn_seeds, jnp.uint32)
    return _integrate(_wrap(denoise_fn), x, jnp.asarray(t, dtype), seeds, settings)


@dataclasses.dataclass(frozen=True)
class _Settings:
    """Non-array sampler settings: the static (hashable) argument of the jitted integrator."""
    schedule: str
    schedule_params: tuple
    scaling: str
    solver: str
    invert: bool
    ends_at_zero: bool
    churn: Optional[tuple]


@functools.partial(jax.jit, static_argnums=(4,))
def _integrate(denoise_fn, x, t, seeds, cfg: _Settings):
    sched = make_schedule(cfg.schedule, *cfg.schedule_params)
    scal = make_scaling(cfg.scaling, sched)
    solver, invert = cfg.solver, cfg.invert
    sigma, sigma_d, s, s_d = sched.sigma, sched.sigma_deriv, scal.s, scal.s_deriv
    batch = (x.shape[0],)

    def denoise(x_hat, tt):                                          # D(x/s; σ(t)) in x units
        return denoise_fn(x_hat / s(tt), jnp.broadcast_to(sigma(tt), batch)).astype(x.dtype)

    def slope(x_cur, tt):                                            # dx/dt (EDM eq. 4)
        d = denoise(x_cur, tt)
        return (sigma_d(tt) / sigma(tt) + s_d(tt) / s(tt)) * x_cur - sigma_d(tt) * s(tt) / sigma(tt) * d

    n = t.shape[0] - 1
    if invert:                                                       # images x̂ at σ(t_0) → x
        x = x * s(t[0])
    else:                                                            # x_0 = ε σ(t_0) s(t_0)
        x = x * (sigma(t[0]) * s(t[0]))
    if solver in ("ddim", "dpmpp2m"):
        return _sigma_multistep(denoise_fn, x, t, solver == "dpmpp2m")

    def step(x_cur, i, order2):
        t_cur, t_next = t[i], t[i + 1]
        if cfg.churn is not None:
            x_cur, t_cur = _churn(x_cur, t_cur, i, n, seeds, dict(cfg.churn), sched, scal)
        h = t_next - t_cur
        d_cur = slope(x_cur, t_cur)
        x_next = x_cur + h * d_cur                                    # Euler
        if order2:                                                    # Heun's trapezoid correction
            x_next = x_cur + h * 0.5 * (d_cur + slope(x_next, t_next))
        return x_next

    heun = solver == "heun"
    last_plain = cfg.ends_at_zero                                    # the step to σ = 0 is Euler
    x = lax.fori_loop(0, n - 1 if last_plain else n, lambda i, xc: step(xc, i, heun), x)
    if last_plain:
        x = step(x, n - 1, False)
    if invert:                                                       # latent = x̂(σ_max) / σ_max
        return x / (s(t[-1]) * sigma(t[-1]))
    return x / s(t[-1])


def _sigma_multistep(denoise_fn, x, sig, second_order):
    """DDIM (η = 0: Euler in σ) or DPM-Solver++(2M) in λ = −log σ (Lu et al. 2022)."""
    batch = (x.shape[0],)
    n = sig.shape[0] - 1

    def body(i, carry):
        x_cur, d_prev = carry
        s_cur, s_next = sig[i], sig[i + 1]
        d = denoise_fn(x_cur, jnp.broadcast_to(s_cur, batch)).astype(x.dtype)
        ratio = s_next / s_cur                                       # e^{−h}
        if second_order:
            s_prev = sig[jnp.maximum(i - 1, 0)]
            h = jnp.log(s_cur) - jnp.log(jnp.maximum(s_next, 1e-30))
            r = (jnp.log(s_prev) - jnp.log(s_cur)) / h
            use_2 = (i > 0) & (s_next > 0)
            d_hat = jnp.where(use_2, (1 + 0.5 / r) * d - (0.5 / r) * d_prev, d)
        else:
            d_hat = d
        return ratio * x_cur + (1 - ratio) * d_hat, d

    x, _ = lax.fori_loop(0, n, body, (x, jnp.zeros_like(x)))
    return x


def _churn(x_cur, t_cur, i, n, seeds, churn, sched, scal):
    """EDM's stochastic step: raise σ by γσ with fresh noise drawn per (seed, step)."""
    s_churn, s_min = churn.get("S_churn", 0.0), churn.get("S_min", 0.0)
    s_max, s_noise = churn.get("S_max", float("inf")), churn.get("S_noise", 1.0)
    sig_cur = sched.sigma(t_cur)
    gamma = jnp.where((s_min <= sig_cur) & (sig_cur <= s_max), min(s_churn / n, 2 ** 0.5 - 1), 0.0)
    t_hat = sched.sigma_inv(sig_cur + gamma * sig_cur)
    keys = jax.vmap(lambda sd: jax.random.fold_in(jax.random.PRNGKey(sd), i))(seeds)
    noise = jax.vmap(lambda k: jax.random.normal(k, x_cur.shape[1:], x_cur.dtype))(keys)
    extra = sig_cur * jnp.sqrt(gamma * (2.0 + gamma))   # √(σ̂² − σ²) without cancellation
    x_hat = scal.s(t_hat) / scal.s(t_cur) * x_cur + extra * scal.s(t_hat) * s_noise * noise
    return x_hat, t_hat

"""Perturbation kernels x_t = s(t)(y + σ(t) n): noise schedules σ(t), scalings s(t), σ grids.

Formulas follow EDM (Karras et al. 2022), Table 1 and the ablation sampler; PAPER.md §4.
Every function works on numpy or jax arrays (float64 inputs stay float64).
"""
import dataclasses
import math
from typing import Callable

import numpy as np

# VP constants used for training and for the default VP sampling range (EDM, Table 1).
VP_BETA_D = 19.9
VP_BETA_MIN = 0.1
VP_EPS_S = 1e-3   # VP sampling stops at t = ε_s
VP_EPS_T = 1e-5   # VP training samples t ~ U(ε_t, 1)

SCHEDULES = ("vp", "ve", "linear")
SCALINGS = ("vp", "none")
DISCRETIZATIONS = ("edm", "vp", "ve", "iddpm")


def _xp(x):
    """numpy for numpy/scalars, jax.numpy for jax arrays and tracers."""
    if isinstance(x, (np.ndarray, np.generic, float, int)):
        return np
    import jax.numpy as jnp
    return jnp


def vp_sigma(t, beta_d=VP_BETA_D, beta_min=VP_BETA_MIN):
    """σ_VP(t) = √(exp(½β_d t² + β_min t) − 1)."""
    xp = _xp(t)
    return xp.sqrt(xp.expm1(0.5 * beta_d * t ** 2 + beta_min * t))


def vp_sigma_deriv(t, beta_d=VP_BETA_D, beta_min=VP_BETA_MIN):
    """dσ_VP/dt = ½(β_min + β_d t)(σ + 1/σ)."""
    sigma = vp_sigma(t, beta_d, beta_min)
    return 0.5 * (beta_min + beta_d * t) * (sigma + 1.0 / sigma)


def vp_sigma_inv(sigma, beta_d=VP_BETA_D, beta_min=VP_BETA_MIN):
    """σ_VP⁻¹(σ) = (√(β_min² + 2β_d ln(1+σ²)) − β_min)/β_d."""
    xp = _xp(sigma)
    return (xp.sqrt(beta_min ** 2 + 2.0 * beta_d * xp.log1p(sigma ** 2)) - beta_min) / beta_d


def vp_betas_for_range(sigma_min, sigma_max, eps_s=VP_EPS_S):
    """(β_d, β_min) with σ_VP(ε_s) = σ_min and σ_VP(1) = σ_max (EDM's re-fit)."""
    beta_d = 2.0 * (math.log(sigma_min ** 2 + 1) / eps_s - math.log(sigma_max ** 2 + 1)) / (eps_s - 1)
    beta_min = math.log(sigma_max ** 2 + 1) - 0.5 * beta_d
    return beta_d, beta_min


@dataclasses.dataclass(frozen=True)
class Schedule:
    """A noise schedule σ(t) with its derivative and inverse."""
    name: str
    sigma: Callable
    sigma_deriv: Callable
    sigma_inv: Callable
    params: tuple = ()


def make_schedule(name, beta_d=VP_BETA_D, beta_min=VP_BETA_MIN):
    """Schedule by name: vp (σ_VP with β_d, β_min), ve (σ = √t), linear (σ = t)."""
    if name == "vp":
        return Schedule("vp",
                        lambda t: vp_sigma(t, beta_d, beta_min),
                        lambda t: vp_sigma_deriv(t, beta_d, beta_min),
                        lambda s: vp_sigma_inv(s, beta_d, beta_min), (beta_d, beta_min))
    if name == "ve":
        return Schedule("ve", lambda t: t ** 0.5, lambda t: 0.5 / t ** 0.5, lambda s: s ** 2)
    if name == "linear":
        return Schedule("linear", lambda t: t, lambda t: 1.0 + 0.0 * t, lambda s: s)
    raise ValueError(f"unknown schedule {name!r}; allowed: {', '.join(SCHEDULES)}")


@dataclasses.dataclass(frozen=True)
class Scaling:
    """A signal scaling s(t) and its derivative, given the schedule it rides on."""
    name: str
    s: Callable
    s_deriv: Callable


def make_scaling(name, schedule: Schedule):
    """Scaling by name: vp (s = 1/√(1+σ(t)²), ṡ = −σσ̇s³) or none (s = 1)."""
    if name == "vp":
        def s(t):
            return (1.0 + schedule.sigma(t) ** 2) ** -0.5

        def s_deriv(t):
            return -schedule.sigma(t) * schedule.sigma_deriv(t) * s(t) ** 3
        return Scaling("vp", s, s_deriv)
    if name == "none":
        return Scaling("none", lambda t: 1.0 + 0.0 * t, lambda t: 0.0 * t)
    raise ValueError(f"unknown scaling {name!r}; allowed: {', '.join(SCALINGS)}")


def _check_steps(num_steps):
    if int(num_steps) != num_steps or num_steps < 2:
        raise ValueError(f"num_steps must be an integer >= 2, got {num_steps!r}")


def _check_range(sigma_min, sigma_max):
    if not (0 < sigma_min < sigma_max):
        raise ValueError(f"need 0 < sigma_min < sigma_max, got sigma_min={sigma_min}, sigma_max={sigma_max}")


def edm_sigmas(num_steps, sigma_min=0.002, sigma_max=80.0, rho=7.0):
    """EDM ρ-grid σ_0 > … > σ_{n−1} followed by σ_n = 0 (num_steps + 1 values, float64)."""
    _check_steps(num_steps)
    _check_range(sigma_min, sigma_max)
    i = np.arange(num_steps, dtype=np.float64)
    inv_rho = 1.0 / rho
    sig = (sigma_max ** inv_rho + i / (num_steps - 1) * (sigma_min ** inv_rho - sigma_max ** inv_rho)) ** rho
    return np.append(sig, 0.0)


def vp_discretization(num_steps, sigma_min=None, sigma_max=None, eps_s=VP_EPS_S):
    """VP grid t_i = 1 + i/(n−1)(ε_s − 1), σ_i = σ_VP(t_i) with β re-fit to [σ_min, σ_max]; trailing 0."""
    _check_steps(num_steps)
    sigma_min = float(vp_sigma(eps_s)) if sigma_min is None else sigma_min
    sigma_max = float(vp_sigma(1.0)) if sigma_max is None else sigma_max
    _check_range(sigma_min, sigma_max)
    beta_d, beta_min = vp_betas_for_range(sigma_min, sigma_max, eps_s)
    t = 1.0 + np.arange(num_steps, dtype=np.float64) / (num_steps - 1) * (eps_s - 1.0)
    return np.append(vp_sigma(t, beta_d, beta_min), 0.0)


def ve_discretization(num_steps, sigma_min=0.02, sigma_max=100.0):
    """VE grid σ_i = √(σ_max² (σ_min²/σ_max²)^{i/(n−1)}) (geometric); trailing 0."""
    _check_steps(num_steps)
    _check_range(sigma_min, sigma_max)
    i = np.arange(num_steps, dtype=np.float64)
    t = sigma_max ** 2 * (sigma_min ** 2 / sigma_max ** 2) ** (i / (num_steps - 1))
    return np.append(np.sqrt(t), 0.0)


def iddpm_u(M=1000, C1=0.001, C2=0.008):
    """iDDPM σ grid u_0 > … > u_M = 0: u_{j−1} = √((u_j²+1)/max(ᾱ(j−1)/ᾱ(j), C1) − 1)."""
    def alpha_bar(j):
        return math.sin(0.5 * math.pi * j / M / (C2 + 1)) ** 2
    u = np.zeros(M + 1, dtype=np.float64)
    for j in range(M, 0, -1):
        u[j - 1] = math.sqrt((u[j] ** 2 + 1) / max(alpha_bar(j - 1) / alpha_bar(j), C1) - 1)
    return u


def iddpm_discretization(num_steps, sigma_min=0.002, sigma_max=81.0, M=1000, C1=0.001, C2=0.008):
    """iDDPM grid: u_f[round((len(u_f)−1) i/(n−1))], u_f = u inside [σ_min, σ_max]; trailing 0."""
    _check_steps(num_steps)
    _check_range(sigma_min, sigma_max)
    u = iddpm_u(M, C1, C2)
    u_f = u[(u >= sigma_min) & (u <= sigma_max)]
    idx = np.round((len(u_f) - 1) / (num_steps - 1) * np.arange(num_steps)).astype(np.int64)
    return np.append(u_f[idx], 0.0)


def sampling_range(discretization, sigma_min=None, sigma_max=None, net_range=(0.0, math.inf)):
    """(σ_min, σ_max) of EDM's ablation sampler: the discretisation's defaults where not given,
    clamped to the range the network was trained for (net_range, e.g. Precond.sigma_range)."""
    defaults = {"edm": (0.002, 80.0), "vp": (float(vp_sigma(VP_EPS_S)), float(vp_sigma(1.0))),
                "ve": (0.02, 100.0), "iddpm": (0.002, 81.0)}
    if discretization not in defaults:
        raise ValueError(f"unknown discretization {discretization!r}; allowed: {', '.join(DISCRETIZATIONS)}")
    lo, hi = defaults[discretization]
    lo = max(lo if sigma_min is None else sigma_min, net_range[0])
    hi = min(hi if sigma_max is None else sigma_max, net_range[1])
    _check_range(lo, hi)
    return lo, hi


def sigma_grid(name, num_steps, **kwargs):
    """σ grid by discretisation name (edm, vp, ve, iddpm) with a trailing 0."""
    fns = {"edm": edm_sigmas, "vp": vp_discretization, "ve": ve_discretization,
           "iddpm": iddpm_discretization}
    if name not in fns:
        raise ValueError(f"unknown discretization {name!r}; allowed: {', '.join(DISCRETIZATIONS)}")
    return fns[name](num_steps, **kwargs)

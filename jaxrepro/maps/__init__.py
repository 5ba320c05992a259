"""Analytic denoisers with the oracle's contract D(x, σ) (pytrees the samplers take under jit), by name.

| name | map | source |
|---|---|---|
| theorem1 | softmax-weighted training images | Zhang et al. 2024, Theorem 1 (`oracle.Oracle`) |
| ls / els | patch-wise softmax, same position / every position | Kamb & Ganguli 2025 (`local.py`) |
| smoothed | closed-form denoiser averaged over perturbed queries | Scarvelis, Borde & Solomon 2025 (`smoothed.py`) |
| population | MoLRG posterior mean (needs the bases) | Wang et al. 2024 (`oracle.molrg_denoiser`) |
"""
import jax
import jax.numpy as jnp

from jaxrepro import oracle
from jaxrepro.maps.local import calibrate, make_local, r_squared, sharded_local  # noqa: F401
from jaxrepro.maps.smoothed import make_smoothed, sharded_smoothed  # noqa: F401

MAPS = ("theorem1", "ls", "els", "smoothed", "population")


def _population(bases, x, sigma):
    return oracle.molrg_denoiser(x, sigma, bases)


def make_map(name, images, **kw):
    """The named map over a training set images [N, *image]; kw: its settings (sizes/edges, lam, bases)."""
    if name == "theorem1":
        return oracle.make_optimal_denoiser(images, **kw)
    if name in ("ls", "els"):
        return make_local(images, equivariant=name == "els", **kw)
    if name == "smoothed":
        return make_smoothed(images, **kw)
    if name == "population":
        if "bases" not in kw:
            raise ValueError("the population map needs the MoLRG bases: make_map('population', images, bases=U)")
        return jax.tree_util.Partial(_population, jnp.asarray(kw["bases"]))
    raise ValueError(f"unknown map {name!r}; allowed: {', '.join(MAPS)}")

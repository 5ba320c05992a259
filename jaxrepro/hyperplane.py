"""Noise hyperplanes and basins (PAPER.md §3): ε(α, β) = α(ε2 − ε1) + β(ε3 − ε1) + ε1 → training-image basins."""
import numpy as np

from jaxrepro import metrics
from jaxrepro.samplers import sample


def plane_latents(eps, alphas, betas):
    """eps [3, *shape] → latents [len(betas), len(alphas), *shape] (row = β, column = α)."""
    eps = np.asarray(eps, np.float32)
    if eps.shape[0] != 3:
        raise ValueError(f"plane_latents needs three noises eps[0..2], got {eps.shape[0]}")
    a = np.asarray(alphas, np.float32)[None, :, None]
    b = np.asarray(betas, np.float32)[:, None, None]
    e = eps.reshape(3, -1)
    plane = a * (e[1] - e[0]) + b * (e[2] - e[0]) + e[0]                     # [Nb, Na, D]
    return plane.reshape(len(betas), len(alphas), *eps.shape[1:])


def nearest_index(images, train_images):
    """Index of the L2-nearest training image of each image [B] (images [B, *shape])."""
    return np.asarray(metrics.top_k_similar(images, train_images, 1)[1][:, 0])


def basin_map(denoise_fn, latents, train_images, sigmas, solver="heun", batch=512, **sample_kw):
    """(basins [*grid] = nearest training image of each sample, samples [*grid, *shape]) of latents [*grid, *shape]."""
    shape = np.shape(train_images)[1:]
    grid = np.shape(latents)[:-len(shape)]
    flat = np.asarray(latents, np.float32).reshape(-1, *shape)
    x = np.concatenate([np.asarray(sample(denoise_fn, flat[i:i + batch], sigmas, solver, **sample_kw))
                        for i in range(0, len(flat), batch)])
    return nearest_index(metrics.quantize(x), train_images).reshape(grid), x.reshape(*grid, *shape)


def agreement(basins1, basins2):
    """Fraction of grid points whose two basin maps name the same training image."""
    return float(np.mean(np.asarray(basins1) == np.asarray(basins2)))

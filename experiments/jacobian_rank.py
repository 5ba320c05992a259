"""Numerical rank of the denoiser Jacobian ∂D/∂x against σ and N: trained network vs optimal denoiser.

    python experiments/jacobian_rank.py [--config small|paper] [--out DIR] [--models DIR]

At num_points points x = y_i + σ n (y_i the first training images, n seeded Gaussian noise) the full
Jacobian of D(·; σ) is built from batched jvps (jaxrepro.jacobian) and its singular values taken; the
numerical rank is the smallest r holding `energy` of Σ s_i². For the oracle at each N in oracle_ns and the
trained model at each N in model_ns, the mean rank per σ is recorded with the mean normalised spectrum
at σ = 1; writes results.json and jacobian_rank.png (rank vs σ | spectra at σ = 1).
"""
import os

import jax
import numpy as np

import repro_tools as rt
from common import Progress
from configs.experiments import jacobian_rank as jacobian_config
from jaxrepro.jacobian import spectra
from jaxrepro.oracle import make_optimal_denoiser


def points(images, sigma, k, seed=0):
    """x = y_i + σ n_i for the first k training images [k, *image]; n_i from key (seed, i)."""
    y = np.asarray(images[:k])
    keys = [jax.random.fold_in(jax.random.PRNGKey(seed), i) for i in range(len(y))]
    noise = np.stack([np.asarray(jax.random.normal(kk, y.shape[1:])) for kk in keys])
    return (y + sigma * noise).astype(np.float32)


def rank_curve(fn, images, cfg):
    """{rank_mean, rank_std, frobenius_mean [S], spectrum_sigma1: mean s / s_max at σ = 1 [d]} over the points."""
    ranks, fro, spec1 = [], [], None
    for sigma in cfg.sigmas:
        svals, r = spectra(fn, points(images, sigma, cfg.num_points), [sigma], cfg.chunk, cfg.energy)
        ranks.append(r[:, 0])
        fro.append(float(np.sqrt((svals[:, 0] ** 2).sum(-1)).mean()))
        if sigma == 1.0:
            spec1 = (svals[:, 0] / np.maximum(svals[:, 0, :1], 1e-30)).mean(0)
    ranks = np.asarray(ranks, np.float64)                            # [S, P]
    return {"rank_mean": ranks.mean(1).tolist(), "rank_std": ranks.std(1).tolist(), "frobenius_mean": fro,
            "spectrum_sigma1": spec1.tolist()}


def run(cfg, log=print):
    tag, over = cfg.model
    prog = Progress(len(cfg.oracle_ns) + len(cfg.model_ns), log)
    out = {"config": cfg.to_dict(), "sigmas": list(cfg.sigmas), "curves": {}}
    for n in cfg.oracle_ns:
        job = rt.model_job(cfg, n, tag, over, log=lambda *a: None) if n in cfg.model_ns else None
        images = job.images if job is not None else _subset(cfg, n)
        out["curves"][f"oracle N={n}"] = c = rank_curve(make_optimal_denoiser(images), images, cfg)
        log(f"oracle N={n}: rank " + " ".join(f"{s:g}:{m:.1f}" for s, m in zip(cfg.sigmas, c["rank_mean"])))
        prog.step(f"oracle N={n}")
        if job is not None:
            out["curves"][f"{tag} N={n}"] = c = rank_curve(rt.net_fn(job), job.images, cfg)
            log(f"{tag} N={n}: rank " + " ".join(f"{s:g}:{m:.1f}" for s, m in zip(cfg.sigmas, c["rank_mean"])))
            prog.step(f"{tag} N={n}")
    out["dim"] = len(next(iter(out["curves"].values()))["spectrum_sigma1"])
    sig = list(cfg.sigmas)
    rt.panels_figure([
        ("numerical rank of ∂D/∂x (99 % energy)", "rank", {k: (sig, v["rank_mean"]) for k, v in out["curves"].items()},
         "σ"),
        ("spectrum at σ = 1", "s_i / s_1", {k: (np.arange(1, out["dim"] + 1), v["spectrum_sigma1"])
                                            for k, v in out["curves"].items()}, "i")],
        os.path.join(cfg.out_dir, "jacobian_rank.png"))
    return out


def _subset(cfg, n):
    """Training images of the base run config at size n (the oracle needs no trained model)."""
    from jaxrepro import data as data_lib
    c = rt.base_config(cfg.data, n).data
    return data_lib.subset(*data_lib.load_dataset(c.name, c.data_dir or None), c.n, c.subset_seed)[0]


def main():
    rt.experiment_main(__doc__, "jacobian_rank", jacobian_config, run, figures="jacobian_rank.png")


if __name__ == "__main__":
    main()

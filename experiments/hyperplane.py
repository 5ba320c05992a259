"""Noise hyperplane and basins: ε(α, β) = α(ε2 − ε1) + β(ε3 − ε1) + ε1 for two models and the oracle.

    python experiments/hyperplane.py [--config small|paper] [--out DIR] [--models DIR]

The regimes sweep's two models at one memorization-regime N (small: digits N = 32, MLP 128 and 256)
and the optimal denoiser sample every point of a 40 × 40 grid of the plane through the latents of
seeds 0, 1, 2 (Heun 18); each point is coloured by the training image its sample is nearest to. Records
the fraction of the plane where the two models' basins agree, and where each agrees with the oracle's.
Writes results.json and hyperplane.png. small: ≈ 30 s of sampling once regimes has run. paper: 1,600
samples per denoiser at 32×32 (minutes on a GPU) plus regimes' models.
"""

import numpy as np

import repro_tools as rt
from configs.experiments import hyperplane as hyperplane_config
from jaxrepro.hyperplane import agreement, basin_map, plane_latents
from jaxrepro.samplers import latents_from_seeds


def run(cfg, log=print):
    caps = list(cfg.capacities)
    jobs = {c: rt.model_job(cfg, cfg.n, c, cfg.capacities[c], log=lambda *a: None) for c in caps}
    job = jobs[caps[0]]
    eps = np.asarray(latents_from_seeds(np.asarray(cfg.plane_seeds), job.shape))
    axis = np.linspace(cfg.extent[0], cfg.extent[1], cfg.grid)
    lat = plane_latents(eps, axis, axis)                                       # [G, G, *shape]
    fns = {c: rt.net_fn(jobs[c]) for c in caps}
    fns["oracle"] = rt.oracle_fn(job)
    maps = {}
    for who, fn in fns.items():
        maps[who], _ = basin_map(fn, lat, job.images, job.sigmas, job.config.sample.solver, **job.sample_kw)
        log(f"basins of {who}: {len(np.unique(maps[who]))} training images reached on the plane")
    names = list(maps)
    agree = {f"{a}|{b}": agreement(maps[a], maps[b]) for i, a in enumerate(names) for b in names[i + 1:]}
    log("basin agreement: " + "  ".join(f"{k} {v:.3f}" for k, v in agree.items()))
    return {"config": cfg.to_dict(), "axis": axis.tolist(), "agreement": agree,
            "basins": {k: v.tolist() for k, v in maps.items()},
            "images_reached": {k: int(len(np.unique(v))) for k, v in maps.items()}}


def figure(res, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    maps, axis = res["basins"], res["axis"]
    fig, axes = plt.subplots(1, len(maps), figsize=(3.3 * len(maps), 3.4))
    ext = [axis[0], axis[-1], axis[0], axis[-1]]
    for ax, (who, m) in zip(axes, maps.items()):
        ax.imshow(np.asarray(m) % 20, origin="lower", extent=ext, cmap="tab20", vmin=0, vmax=19,
                  interpolation="nearest")
        ax.plot([0, 1, 0], [0, 0, 1], "k^", ms=4)
        other = [v for k, v in res["agreement"].items() if who in k.split("|") and "oracle" in k.split("|")]
        ax.set_title(f"{who}" + (f"  (= oracle on {other[0]:.0%})" if other and who != "oracle" else ""), fontsize=8)
        ax.set_xlabel("α")
        ax.set_ylabel("β")
    fig.suptitle("basins: colour = nearest training image of the sample at ε(α, β)", fontsize=9)
    return rt.save_figure(fig, path, dpi=70)


def main():
    rt.experiment_main(__doc__, "hyperplane", hyperplane_config, run, figure)


if __name__ == "__main__":
    main()

"""σ-CFDM samples vs the smoothing λ (Scarvelis, Borde & Solomon, "Closed-form diffusion models", TMLR 2025).

    python experiments/smoothing.py [--config small|paper] [--out DIR]

No training: the smoothed closed-form denoiser (maps.make_smoothed) of the first N images of the data set is
sampled with Heun 18 on the EDM grid from the same seeds for each λ. Per λ: GL (Gu ratio test), the pixel
L2 distance of each (quantized) sample to its nearest training image (RMS per pixel; median and 10 % / 90 %
quantiles), the RP of each λ's samples against λ = 0's (Theorem 1), and the same distance for held-out
images of the data set (what a new image looks like). small: digits N = 256, 256 seeds, ≈ 1 min on 2 cores.
paper: CIFAR-10 N = 50K, 10K seeds: the oracle costs 4·N·D FLOPs per image and evaluation, × M = 8
perturbations × 35 evaluations ≈ 1.7 PFLOP per image: ≈ 35 s per image per H100, a sharded job
(maps.sharded_smoothed splits the training set over the mesh; seeds split over processes).
"""
import os

import numpy as np

import repro_tools as rt
from common import Progress, write_results
from configs.experiments import smoothing as smoothing_config
from jaxrepro import data as data_lib
from jaxrepro import maps, metrics, plots
from jaxrepro.compare import sample_seeds
from jaxrepro.kernels import edm_sigmas


def nn_distance(x, train):
    """RMS-per-pixel L2 distance of each image [S, ...] to its nearest training image [S]."""
    d, _ = metrics.top_k_similar(metrics.quantize(x), train, 1)
    return np.asarray(d[:, 0]) / np.sqrt(np.prod(train.shape[1:]))


def _quantiles(d):
    return {"median": float(np.median(d)), "q10": float(np.quantile(d, 0.1)), "q90": float(np.quantile(d, 0.9))}


def run(cfg, log=print):
    images, labels = data_lib.load_dataset(cfg.data)
    perm = np.random.default_rng(0).permutation(len(images))      # data.subset's permutation (seed 0)
    train, held = images[perm[:cfg.n]], images[perm[cfg.n:cfg.n + cfg.num_reference]]
    seeds, sigmas = np.arange(cfg.num_seeds), edm_sigmas(18)
    sc = rt.Scorer(train, cfg.descriptor, cfg.threshold, cfg.sscd_checkpoint)
    prog, rows, base, grid = Progress(len(cfg.lams), log), [], None, []
    for lam in cfg.lams:
        den = maps.make_smoothed(train, lam, num_noise=cfg.num_noise)
        x = sample_seeds(den, seeds, train.shape[1:], sigmas, "heun")
        base = x if base is None else base
        row = {"lam": float(lam), **sc.gl(x), "nn_distance": _quantiles(nn_distance(x, train)),
               "vs_theorem1": sc.pair(x, base, seeds)}
        rows.append(row)
        prog.step(f"λ={lam}: GL {row['gl']:.2f}  NN distance median {row['nn_distance']['median']:.3f}  "
                  f"RP vs Theorem 1 {row['vs_theorem1']['rp']:.2f}")
        grid.append((f"λ = {lam}", x[:12]))
    plots.image_rows([g for _, g in grid] + [train[sc.nearest(base)[:12]]],
                     os.path.join(cfg.out_dir, "smoothing_grid.png"), [t for t, _ in grid] + ["nearest\ntrain"])
    held_d = _quantiles(nn_distance(held, train)) if len(held) else None
    if held_d:
        log(f"held-out images: NN distance median {held_d['median']:.3f}")
    return {"config": cfg.to_dict(), "rows": rows, "held_out_nn_distance": held_d}


def figure(res, path):
    rows = res["rows"]
    lam = [max(r["lam"], 1e-3) for r in rows]                   # λ = 0 drawn at 1e-3 on the log axis
    held = res["held_out_nn_distance"]
    nn = {"samples (median)": (lam, [r["nn_distance"]["median"] for r in rows]),
          "samples (10 %)": (lam, [r["nn_distance"]["q10"] for r in rows])}
    if held:
        nn["held-out images (median)"] = (lam, [held["median"]] * len(lam))
    panels = [("GL vs smoothing", "GL (Gu ratio test)", {"σ-CFDM": (lam, [r["gl"] for r in rows])}, "λ (0 at 1e-3)"),
              ("distance to nearest training image", "RMS pixel L2", nn, "λ (0 at 1e-3)"),
              ("agreement with Theorem 1", "RP vs λ = 0", {"σ-CFDM": (lam, [r["vs_theorem1"]["rp"] for r in rows])},
               "λ (0 at 1e-3)")]
    return rt.panels_figure(panels, path, suptitle=f"σ-CFDM on {res['config']['data']}, N = {res['config']['n']}")


def main():
    args = rt.parse_args(__doc__, "smoothing")
    cfg = smoothing_config.get_config(args.config)
    cfg.out_dir = args.out or cfg.out_dir
    os.makedirs(cfg.out_dir, exist_ok=True)
    res = run(cfg)
    write_results(cfg.out_dir, res)
    print("wrote", figure(res, os.path.join(cfg.out_dir, "smoothing.png")), "and results.json")


if __name__ == "__main__":
    main()

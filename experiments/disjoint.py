"""Disjoint training sets (Kadkhodaie, Guth, Simoncelli & Mallat, ICLR 2024): do two models trained on
non-overlapping halves of the data produce the same image from the same seed once N is large enough?

    python experiments/disjoint.py [--config small|paper] [--out DIR] [--models DIR]

The data set is cut by one seeded permutation (data.subset's): model A trains on its first N images (the
regimes sweep's run directory when N matches), model B on the N images from position ⌊len/2⌋ on (saved as
an npz data set, an ordinary run directory), model A' on A's images with another training seed. All three
are sampled from the same seeds (Heun 18, EDM grid); per N: RP (the descriptor at its fixed threshold) and
the per-pixel distance (mean |x1 − x2| and RMS) of A vs B (disjoint) and of A vs A' (same set), and GL
(Gu ratio test) of each model against its own training set. Kadkhodaie et al. see disjoint models agree
from N ≈ 10^5 CelebA faces (80×80); digits are far smaller.

small: digits N ∈ {16, 128, 898} per half, the 4×256 MLP (4000 steps of batch 128, ≈ 30 s per model on
2 cores), 256 seeds, pixel_l2 at −0.25: ≈ 3 min (≈ 2 min when the regimes sweep ran first).
paper: CIFAR-10 N = 2^6 … 2^14 and 25K per half, DDPM++ C = 64 (390k steps each ≈ 2 A100-hours, three
models per N: ≈ 36 GPU-hours), 10K seeds, SSCD at 0.6.
"""
import os

import numpy as np

import repro_tools as rt
from common import Progress
from configs.experiments import disjoint as disjoint_config
from jaxrepro import data as data_lib


def second_half(cfg, n):
    """Path of an npz data set holding images [half, half + n) of the permutation (written once)."""
    path = os.path.abspath(os.path.join(cfg.models_dir, "halves", f"{cfg.data}_second_n{n}.npz"))
    if not os.path.exists(path):
        images, labels = data_lib.load_dataset(cfg.data)
        half = len(images) // 2
        if not 1 <= n <= half:
            raise ValueError(f"N={n} per half must be in [1, {half}] for {cfg.data} ({len(images)} images)")
        idx = np.random.default_rng(cfg.subset_seed).permutation(len(images))[half:half + n]
        data_lib.save_npz(path, images[idx], labels[idx])
    return path


def pixel_distance(x1, x2):
    """{mean |x1 − x2| per pixel, mean over images of the RMS pixel difference} of seed-matched samples."""
    d = (np.clip(x1, -1, 1) - np.clip(x2, -1, 1)).reshape(len(x1), -1)
    return {"mean_abs": float(np.mean(np.abs(d))), "rms": float(np.mean(np.sqrt(np.mean(d ** 2, axis=1))))}


def run(cfg, log=print):
    seeds, quiet = np.arange(cfg.num_seeds), (lambda *a: None)
    prog, rows = Progress(len(cfg.ns), log), []
    for n in cfg.ns:
        path = second_half(cfg, n)
        jobs = {"A": rt.model_job(cfg, n, cfg.tag, cfg.model, log=quiet),
                "B": rt.model_job(cfg, n, f"{cfg.tag}_secondhalf", {**cfg.model, "data": {"name": f"npz:{path}"}},
                                  log=quiet),
                "A2": rt.model_job(cfg, n, f"{cfg.tag}_seed1", {**cfg.model, "seed": 1}, log=quiet)}
        xs = {k: rt.draw(job, rt.net_fn(job), seeds) for k, job in jobs.items()}
        sc = rt.scorer_for(cfg, jobs["A"])
        row = {"n": int(n),
               "disjoint": {**sc.pair(xs["A"], xs["B"], seeds), **pixel_distance(xs["A"], xs["B"])},
               "same_set": {**sc.pair(xs["A"], xs["A2"], seeds), **pixel_distance(xs["A"], xs["A2"])},
               "gl": {k: rt.scorer_for(cfg, job).gl(xs[k])["gl"] for k, job in jobs.items()}}
        overlap = len({im.tobytes() for im in jobs["A"].images} & {im.tobytes() for im in jobs["B"].images})
        row["shared_training_images"] = overlap               # 0 unless the data set holds exact duplicates
        rows.append(row)
        prog.step(f"N={n}: disjoint RP {row['disjoint']['rp']:.2f} |Δ| {row['disjoint']['mean_abs']:.3f}  "
                  f"same set RP {row['same_set']['rp']:.2f} |Δ| {row['same_set']['mean_abs']:.3f}  GL {row['gl']}")
    return {"config": cfg.to_dict(), "rows": rows}


def figure(res, path):
    rows = res["rows"]
    n = [r["n"] for r in rows]
    col = lambda k, f: [r[k][f] for r in rows]  # noqa: E731
    panels = [("RP between two models", "RP", {"disjoint halves": (n, col("disjoint", "rp")),
                                                 "same set, other seed": (n, col("same_set", "rp"))}, "N per model"),
              ("per-pixel distance", "mean |x1 − x2|", {"disjoint halves": (n, col("disjoint", "mean_abs")),
                                                         "same set, other seed": (n, col("same_set", "mean_abs"))},
               "N per model"),
              ("GL (Gu ratio test)", "GL", {k: (n, [r["gl"][k] for r in rows]) for k in ("A", "B", "A2")}, "N per model")]
    return rt.panels_figure(panels, path, suptitle=f"disjoint training sets ({res['config']['data']}, "
                                                   f"{res['config']['num_seeds']} seeds)")


def main():
    rt.experiment_main(__doc__, "disjoint", disjoint_config, run, figure)


if __name__ == "__main__":
    main()

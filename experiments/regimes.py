"""Regimes: RP and GL of models against their optimal denoiser and each other as N grows (PAPER.md §5).

    python experiments/regimes.py [--config small|paper] [--out DIR] [--models DIR]

small (digits, 8×8): N ∈ {16, 32, …, 1024, 1797}, MLPs of width 128 and 256 (4000 steps of batch 128
each), 256 seeds, Heun 18 steps, pixel_l2 at −0.25: 10 min measured on the shared, loaded 2-core machine.
paper (CIFAR-10, 32×32): N = 2^6 … 2^15, DDPM++ C = 64 and C = 128 with VP preconditioning (cifar_small),
390k steps of batch 128 each (50M images), 10K seeds, SSCD at 0.6. Cost: 20 trainings; EDM's C = 128
trains 50M images in ≈ 6 A100-hours and C = 64 in ≈ 2, so ≈ 80 A100-hours of training; sampling 10K
seeds × 35 evaluations per model ≈ 0.2 h each, the oracle at N = 2^15 ≈ 0.1 h: ≈ 90 GPU-hours in all.

Per N it records the same-image rate and RP of each model against the oracle, RP and the same-image
rate between the capacities (same seeds), GL of each model and of the oracle (Gu ratio test and
1 − P(max_i M > threshold)) and the denoiser gap E‖D_θ − D*‖² over the σ grid; results.json and
regimes.png go to the output folder.
"""

import numpy as np

import repro_tools as rt
from common import Progress
from configs.experiments import regimes as regimes_config
from jaxrepro.compare import denoiser_gap


def run(cfg, log=print):
    """Train (or reuse) every model of the sweep, sample it and the oracle from the same seeds; returns results."""
    caps, seeds = list(cfg.capacities), np.arange(cfg.num_seeds)
    prog, rows = Progress(len(cfg.ns) * len(caps), log), []
    for n in cfg.ns:
        row, xs = {"n": int(n)}, {}
        for cap in caps:
            job = rt.model_job(cfg, n, cap, cfg.capacities[cap], log=lambda *a: None)
            net = rt.net_fn(job)
            xs[cap] = rt.draw(job, net, seeds)
            gaps = denoiser_gap(net, rt.oracle_fn(job), job.images, job.sigmas, cfg.gap_images)
            row[cap] = {"gap": {f"{s:.4g}": g for s, g in gaps.items()}, "gap_max": max(gaps.values())}
            prog.step(f"N={n} {cap}")
        xs["oracle"] = rt.draw(job, rt.oracle_fn(job), seeds)
        sc = rt.scorer_for(cfg, job)
        for cap in caps:
            row[cap].update(sc.pair(xs[cap], xs["oracle"], seeds), **sc.gl(xs[cap]))
        row["oracle"] = sc.gl(xs["oracle"])
        row["between"] = sc.pair(xs[caps[0]], xs[caps[-1]], seeds)
        log(f"N={n}: " + "  ".join(f"{c}: same {row[c]['same_image_rate']:.2f} RP {row[c]['rp']:.2f} "
                                   f"GL {row[c]['gl']:.2f}" for c in caps)
            + f"  between RP {row['between']['rp']:.2f}  GL oracle {row['oracle']['gl']:.2f}")
        rows.append(row)
    return {"config": cfg.to_dict(), "rows": rows}


def figure(res, path):
    rows, caps = res["rows"], list(res["config"]["capacities"])
    n = [r["n"] for r in rows]
    col = lambda f: [f(r) for r in rows]  # noqa: E731
    panels = [
        ("model vs oracle", "same-image rate / RP",
         {**{f"same {c}": (n, col(lambda r: r[c]["same_image_rate"])) for c in caps},
          **{f"RP {c}": (n, col(lambda r: r[c]["rp"])) for c in caps}}, "N"),
        ("between capacities", "", {"RP": (n, col(lambda r: r["between"]["rp"])),
                                    "same image": (n, col(lambda r: r["between"]["same_image_rate"]))}, "N"),
        ("GL (Gu ratio test)", "GL", {**{c: (n, col(lambda r: r[c]["gl"])) for c in caps},
                                      "oracle": (n, col(lambda r: r["oracle"]["gl"]))}, "N"),
        ("denoiser gap", "max_σ E‖D_θ − D*‖²", {c: (n, col(lambda r: r[c]["gap_max"])) for c in caps}, "N"),
    ]
    return rt.panels_figure(panels, path, suptitle=f"regimes ({res['config']['data']}, {res['config']['num_seeds']} seeds)")


def main():
    rt.experiment_main(__doc__, "regimes", regimes_config, run, figure)


if __name__ == "__main__":
    main()

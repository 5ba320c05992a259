"""Cross-model matrix: RP and same-image rate for every pair of models, kernels and samplers (PAPER.md §5).

    python experiments/cross_model.py [--config small|paper] [--out DIR] [--models DIR]

In each regime (small: N = 32 and 1797 digits) it trains (or reuses) models that differ in architecture
(MLP, DDPM++ tiny, U-ViT tiny with patch 2), kernel (EDM, VP, VE loss + preconditioning), samples each
from the same seeds with its config's solver (Heun 18), samples the reference model also with Euler, DDIM and
DPM-Solver++(2M), and the optimal denoiser with Heun; writes heat maps of RP and of the same-image rate
for every pair (results.json, cross_model_n{N}.png).
small: 3 MLPs × 4000 steps + a DDPM++ micro (C = 8, one level) × 600 and U-ViT tiny × 800 steps per
regime, 8 min measured on the loaded 2-core machine (the EDM MLP is shared with experiments/regimes.py). paper: CIFAR-10 N = 1024 and 50,000, DDPM++ C = 128 with
VP / VE / EDM and U-ViT-S/2, 390k steps of batch 128 each (≈ 6 A100-hours per DDPM++ C = 128, ≈ 4 per
U-ViT-S/2: ≈ 45 GPU-hours of training for 8 models) and 10K seeds per sampler (≈ 2 GPU-hours of sampling).
"""
import os

import numpy as np

import repro_tools as rt
from common import Progress
from configs.experiments import cross_model as cross_model_config


def matrix(names, xs, sc, seeds):
    """[K, K] RP and same-image rate for every pair of sample sets."""
    k = len(names)
    rp, same = np.eye(k), np.eye(k)
    for i in range(k):
        for j in range(i + 1, k):
            s = sc.pair(xs[names[i]], xs[names[j]], seeds)
            rp[i, j] = rp[j, i] = s["rp"]
            same[i, j] = same[j, i] = s["same_image_rate"]
    return rp, same


def off_diagonal(m, k):
    """Mean of the off-diagonal entries of the first k rows/columns (models only, not the oracle)."""
    m = np.asarray(m)[:k, :k]
    return float((m.sum() - np.trace(m)) / max(k * (k - 1), 1))


def run(cfg, log=print):
    seeds, out = np.arange(cfg.num_seeds), {"config": cfg.to_dict(), "regimes": []}
    prog = Progress(len(cfg.ns) * len(cfg.models), log)
    for n in cfg.ns:
        xs, gl, jobs = {}, {}, {}
        order = [cfg.reference] + sorted(t for t in cfg.models if t != cfg.reference)
        for tag in order:
            over = cfg.models[tag]
            jobs[tag] = job = rt.model_job(cfg, n, tag, over, log=lambda *a: None)
            xs[tag] = rt.draw(job, rt.net_fn(job), seeds)
            prog.step(f"N={n} {tag}")
        ref = cfg.reference
        for solver in cfg.solvers:
            if solver != jobs[ref].config.sample.solver:
                xs[f"{ref}:{solver}"] = rt.draw(jobs[ref], rt.net_fn(jobs[ref]), seeds, solver=solver)
        xs["oracle"] = rt.draw(jobs[ref], rt.oracle_fn(jobs[ref]), seeds)
        sc = rt.scorer_for(cfg, jobs[ref])
        names = list(xs)
        rp, same = matrix(names, xs, sc, seeds)
        gl = {k: sc.gl(v)["gl"] for k, v in xs.items()}
        k = len(names) - 1
        rec = {"n": int(n), "names": names, "rp": rp.tolist(), "same_image_rate": same.tolist(), "gl": gl,
               "rp_offdiag_mean": off_diagonal(rp, k), "same_offdiag_mean": off_diagonal(same, k),
               "rp_vs_oracle": dict(zip(names[:-1], rp[-1, :-1].tolist())),
               "same_vs_oracle": dict(zip(names[:-1], same[-1, :-1].tolist()))}
        log(f"N={n}: mean off-diagonal RP {rec['rp_offdiag_mean']:.3f}, same-image {rec['same_offdiag_mean']:.3f}; "
            f"RP vs oracle " + " ".join(f"{a} {b:.2f}" for a, b in rec["rp_vs_oracle"].items()))
        out["regimes"].append(rec)
        rt.heatmaps({f"RP (N={n})": rp, f"same-image rate (N={n})": same}, names,
                    os.path.join(cfg.out_dir, f"cross_model_n{n}.png"))
    return out


def main():
    rt.experiment_main(__doc__, "cross_model", cross_model_config, run, figures="cross_model_n*.png")


if __name__ == "__main__":
    main()

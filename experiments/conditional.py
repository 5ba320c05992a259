"""Conditional models: RP_cond and RP_between (PAPER.md §3) against the class-conditional optimal denoiser.

    python experiments/conditional.py [--config small|paper] [--out DIR] [--models DIR]

Two class-conditional models (model num_classes = 10; a seed's class is seed mod 10, as Job binds it)
and one unconditional model per N. RP_cond = P(M(x1^c, x2^c) > t) between the two conditional models
and of each against the conditional oracle (D* over the training images of class c); RP_between =
P(max_c M(x1, x2^c) > t) between the unconditional model and each conditional one (every class sampled
from the same seed), and between the unconditional and the conditional oracle. Every class needs a training
image in the subset (Job refuses others; N = 34 is the smallest of digits' permutation with all ten); the
experiment also records the fraction of conditional-oracle samples that are images of the asked class.
Writes results.json and conditional.png.
small: 2 conditional MLPs × 4000 steps per N (≈ 2 min on 2 CPU cores). paper: 2 DDPM++ × 2 N, 390k
steps each (≈ 16 A100-hours) + 11 × 10K samples per model.
"""

import numpy as np

import repro_tools as rt
from common import Progress
from configs.experiments import conditional as conditional_config
from jaxrepro import metrics


def _rp_between(sc, x_uncond, x_cond_all, seeds):
    """RP_between of an unconditional sample set [S] and per-class sets [K, S] of the same seeds."""
    f1 = sc.desc.embed(metrics.quantize(x_uncond))
    f2 = np.stack([np.asarray(sc.desc.embed(metrics.quantize(x))) for x in x_cond_all], axis=1)   # [S, K, F]
    return metrics.rp_between_score(f1, f2, seeds, seeds, sc.desc, sc.threshold)


def run(cfg, log=print):
    tags = list(cfg.cond_models)
    prog, rows = Progress(len(cfg.ns) * (len(tags) + 1), log), []
    for n in cfg.ns:
        jobs = {t: rt.model_job(cfg, n, t, cfg.cond_models[t], log=lambda *a: None) for t in tags}
        job = jobs[tags[0]]
        present = np.unique(job.labels)
        seeds = np.asarray([s for s in range(cfg.num_seeds) if s % 10 in present])
        labels = seeds % 10
        sc = rt.scorer_for(cfg, job)
        xs = {t: rt.draw(jobs[t], rt.net_fn(jobs[t]), seeds, labels=labels) for t in tags}
        orc = rt.oracle_fn(job)
        xs["oracle_cond"] = rt.draw(job, orc, seeds, labels=labels)
        row = {"n": int(n), "num_seeds": int(len(seeds)), "classes_present": present.tolist()}
        nn = sc.nearest(xs["oracle_cond"])                # the conditional oracle copies images of the seed's class
        row["oracle_cond_in_class"] = float(np.mean(np.asarray(job.labels)[nn] == labels))
        row["rp_cond"] = {f"{a}|{b}": sc.pair(xs[a], xs[b], seeds) for i, a in enumerate(xs) for b in list(xs)[i + 1:]}
        row["gl"] = {t: sc.gl(x)["gl"] for t, x in xs.items()}
        utag, uover = cfg.uncond_model
        ujob = rt.model_job(cfg, n, utag, uover, log=lambda *a: None)
        x_u = rt.draw(ujob, rt.net_fn(ujob), seeds)
        x_uo = rt.draw(ujob, rt.oracle_fn(ujob), seeds)
        prog.step(f"N={n} {utag}")
        row["rp_between"] = {}
        for t in tags + ["oracle_cond"]:
            fn, j = (orc, job) if t == "oracle_cond" else (rt.net_fn(jobs[t]), jobs[t])
            per_class = [rt.draw(j, fn, seeds, labels=np.full_like(seeds, c)) for c in present]
            key_u = "oracle" if t == "oracle_cond" else utag
            row["rp_between"][f"{key_u}|{t}"] = _rp_between(sc, x_uo if t == "oracle_cond" else x_u, per_class, seeds)
            if t != "oracle_cond":
                prog.step(f"N={n} {t}")
        row["rp_uncond"] = {f"{utag}|oracle": sc.pair(x_u, x_uo, seeds)}
        log(f"N={n}: RP_cond " + "  ".join(f"{k} {v['rp']:.2f}" for k, v in row["rp_cond"].items())
            + "  RP_between " + "  ".join(f"{k} {v:.2f}" for k, v in row["rp_between"].items()))
        rows.append(row)
    return {"config": cfg.to_dict(), "rows": rows}


def figure(res, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows = res["rows"]
    fig, axes = plt.subplots(1, len(rows), figsize=(5 * len(rows), 3.4), squeeze=False)
    for ax, r in zip(axes[0], rows):
        items = [("RP_cond " + k, v["rp"]) for k, v in r["rp_cond"].items()]
        items += [("RP_between " + k, v) for k, v in r["rp_between"].items()]
        items += [("RP uncond " + k, v["rp"]) for k, v in r["rp_uncond"].items()]
        ax.barh(range(len(items)), [v for _, v in items], color="tab:blue")
        ax.set_yticks(range(len(items)), [k for k, _ in items], fontsize=6)
        ax.set_xlim(0, 1)
        ax.set_title(f"N = {r['n']} ({r['num_seeds']} seeds)", fontsize=9)
    return rt.save_figure(fig, path)


def main():
    rt.experiment_main(__doc__, "conditional", conditional_config, run, figure)


if __name__ == "__main__":
    main()

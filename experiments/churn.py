"""Negative control: EDM's stochastic sampler (churn) with growing S_churn from the same seeds; RP must fall.

    python experiments/churn.py [--config small|paper] [--out DIR] [--models DIR]

The regimes sweep's two models (small: MLP 128 and 256 at N = 32 and 1797), Heun 18 with EDM's churn
(S_min = 0, S_max = ∞, S_noise = 1) from the same latent seeds. Per S_churn: RP and same-image rate of
model A (churn) against its own deterministic samples, against the deterministic oracle, and against
model B with churn — the churn noise shared (same churn seeds) and independent (seeds + offset).
Writes results.json and churn.png. small: sampling only once regimes has run (≈ 1 min). paper: 7 × 4 ×
10K samples per N on regimes' models (≈ 2 GPU-hours).
"""

import numpy as np

import repro_tools as rt
from common import Progress
from configs.experiments import churn as churn_config
from jaxrepro.samplers import latents_from_seeds, sample


def draw_churn(job, fn, seeds, s_churn, churn_seeds, batch=256):
    """Heun samples [S, *shape] with EDM's churn noise drawn per (churn seed, step)."""
    out = []
    for i in range(0, len(seeds), batch):
        lat = latents_from_seeds(seeds[i:i + batch], job.shape)
        out.append(np.asarray(sample(fn, lat, job.sigmas, "heun", churn=dict(S_churn=float(s_churn)),
                                     churn_seeds=churn_seeds[i:i + batch], **job.sample_kw)))
    return np.concatenate(out)


def run(cfg, log=print):
    a, b = list(cfg.capacities)[-1], list(cfg.capacities)[0]
    seeds = np.arange(cfg.num_seeds)
    prog, rows = Progress(len(cfg.ns) * len(cfg.s_churn), log), []
    for n in cfg.ns:
        ja, jb = (rt.model_job(cfg, n, t, cfg.capacities[t], log=lambda *a: None) for t in (a, b))
        fa, fb = rt.net_fn(ja), rt.net_fn(jb)
        sc = rt.scorer_for(cfg, ja)
        det_a, det_o = rt.draw(ja, fa, seeds, solver="heun"), rt.draw(ja, rt.oracle_fn(ja), seeds, solver="heun")
        row = {"n": int(n), "model_a": a, "model_b": b, "by_s_churn": []}
        for s in cfg.s_churn:
            xa = draw_churn(ja, fa, seeds, s, seeds)
            xb = draw_churn(jb, fb, seeds, s, seeds)
            xb_ind = draw_churn(jb, fb, seeds, s, seeds + cfg.churn_seed_offset)
            rec = {"s_churn": float(s), "a_vs_a_deterministic": sc.pair(xa, det_a, seeds),
                   "a_vs_oracle": sc.pair(xa, det_o, seeds), "a_vs_b_shared_noise": sc.pair(xa, xb, seeds),
                   "a_vs_b_independent_noise": sc.pair(xa, xb_ind, seeds), "gl_a": sc.gl(xa)["gl"]}
            row["by_s_churn"].append(rec)
            prog.step(f"N={n} S_churn={s}: RP a|det {rec['a_vs_a_deterministic']['rp']:.2f}  a|oracle "
                      f"{rec['a_vs_oracle']['rp']:.2f}  a|b shared {rec['a_vs_b_shared_noise']['rp']:.2f}  "
                      f"a|b independent {rec['a_vs_b_independent_noise']['rp']:.2f}")
        rows.append(row)
    return {"config": cfg.to_dict(), "rows": rows}


KEYS = ("a_vs_a_deterministic", "a_vs_oracle", "a_vs_b_shared_noise", "a_vs_b_independent_noise")


def figure(res, path):
    panels = []
    for r in res["rows"]:
        s = [max(x["s_churn"], 0.1) for x in r["by_s_churn"]]             # S_churn = 0 drawn at 0.1 (log axis)
        panels.append((f"N = {r['n']} (a = {r['model_a']}, b = {r['model_b']})", "RP",
                       {k: (s, [x[k]["rp"] for x in r["by_s_churn"]]) for k in KEYS}, "S_churn (0 drawn at 0.1)"))
    return rt.panels_figure(panels, path)


def main():
    rt.experiment_main(__doc__, "churn", churn_config, run, figure)


if __name__ == "__main__":
    main()

"""Theory vs experiment: RP(model, optimal denoiser) and the denoiser gap against σ and N (PAPER.md §5).

    python experiments/theory.py [--config small|paper] [--out DIR] [--models DIR]

Uses the regimes sweep's models (trained there, or here if missing). For every N and model it samples
network and oracle from the same seeds with the same solver (Heun 18 and Euler 18), and with the authors'
mismatch (network Heun, oracle Euler 18 — the official code), and records RP, the same-image rate and
the denoiser gap E‖D_θ − D*‖² at every σ of the grid. Writes results.json and theory.png (RP vs N per
solver pairing; gap vs σ per N). small: sampling only once regimes has run (≈ 1 min; ≈ 5 min otherwise).
paper: as regimes (≈ 90 GPU-hours when it trains the models itself; ≈ 3 GPU-hours of sampling otherwise).
"""

import numpy as np

import repro_tools as rt
from common import Progress
from configs.experiments import theory as theory_config
from jaxrepro.compare import denoiser_gap


def run(cfg, log=print):
    caps, seeds = list(cfg.capacities), np.arange(cfg.num_seeds)
    prog, rows = Progress(len(cfg.ns) * len(caps), log), []
    for n in cfg.ns:
        row = {"n": int(n)}
        for cap in caps:
            job = rt.model_job(cfg, n, cap, cfg.capacities[cap], log=lambda *a: None)
            net, orc = rt.net_fn(job), rt.oracle_fn(job)
            sc, xs, rec = rt.scorer_for(cfg, job), {}, {}
            for s_net, s_orc in cfg.pairs:
                for who, fn, s in (("net", net, s_net), ("orc", orc, s_orc)):
                    if (who, s) not in xs:
                        xs[who, s] = rt.draw(job, fn, seeds, solver=s)
                rec[f"{s_net}/{s_orc}"] = sc.pair(xs["net", s_net], xs["orc", s_orc], seeds)
            gaps = denoiser_gap(net, orc, job.images, job.sigmas, cfg.gap_images)
            rec["gap"] = {f"{s:.4g}": g for s, g in gaps.items()}
            row[cap] = rec
            prog.step(f"N={n} {cap}: " + "  ".join(f"{k} RP {v['rp']:.2f}" for k, v in rec.items() if k != "gap"))
        rows.append(row)
    return {"config": cfg.to_dict(), "rows": rows}


def figure(res, path):
    rows, caps = res["rows"], list(res["config"]["capacities"])
    n = [r["n"] for r in rows]
    keys = [f"{a}/{b}" for a, b in res["config"]["pairs"]]
    panels = [(f"RP(model, oracle), {cap}", "RP (net solver / oracle solver)",
               {k: (n, [r[cap][k]["rp"] for r in rows]) for k in keys}, "N") for cap in caps]
    cap = caps[-1]
    sig = lambda r: [float(s) for s in r[cap]["gap"]]  # noqa: E731
    panels.append((f"denoiser gap, {cap}", "E‖D_θ − D*‖²",
                   {f"N={r['n']}": (sig(r), list(r[cap]["gap"].values())) for r in rows}, "σ"))
    return rt.panels_figure(panels, path)


def main():
    rt.experiment_main(__doc__, "theory", theory_config, run, figure)


if __name__ == "__main__":
    main()

"""Which analytic map does a trained denoiser follow as N grows? Theorem 1, LS, ELS, σ-CFDM, MoLRG population.

    python experiments/which_map.py [--config small|paper] [--out DIR] [--models DIR]

For each trained model the queries are the states of its own PF-ODE paths (Euler on the EDM grid, from
`num_queries` seeds) at every `sigma_stride`-th σ; at each σ the model's D_θ is compared with each map:
r² = 1 − Σ‖D_map − D_θ‖² / Σ‖D_θ − mean_b D_θ‖² and the gap E‖D_map − D_θ‖². LS / ELS use the patch
size schedule calibrated on that model (`maps.calibrate`, best of `candidates` per σ); σ-CFDM the best
λ of `lams`. Per map: median r² over σ (Kamb & Ganguli report medians) and mean gap over σ.
MoLRG (D = 16, K = 3 rank-2 classes): MLPs of two capacities trained on N samples; the gap to the
empirical (Theorem 1) and the population oracle against N, and the N where they cross (and σ-CFDM; no
LS / ELS: MoLRG vectors have no spatial neighbourhoods, their 4×4 layout is arbitrary).

small (2 CPU cores): digits 4×256 MLP at N ∈ {16, 64, 256, 1797} (regimes' run directories, 4000 steps),
DDPM++ tiny (189K parameters, 800 steps of batch 64) at N ∈ {64, 1797}, MoLRG MLPs 64×2 and 256×4 at
7 values of N (1200 steps), 16 query paths, 7 σ: 6.3 min wall / 7.5 CPU-min measured with every model
already trained (shared machine); training adds ≈ 4 CPU-min for the DDPM++ and MoLRG models (+ ≈ 2 for
the MLPs when the regimes sweep has not run).
paper: CIFAR-10 DDPM++ C = 64 (regimes' runs) at N = 2^6 … 2^14 and 50K. Cost of the ELS machine over
50K images: one D(x; σ) of a 32×32×3 image compares 1,024 query patches with 51.2M training patches of
F = 3P² values: 4 · 1024 · 51.2M · F FLOPs = 16 TFLOP at P = 5 (145 TFLOP at P = 15), i.e. ≈ 0.3 s on an
H100 at ≈ 50 TFLOP/s (float32, precision HIGHEST); the calibration (7 sizes × 7 σ × 32 queries) ≈ 2·10^17
FLOP ≈ 1 GPU-hour per model. The stored patch set is 51.2M · F floats (15 GB at P = 5, 138 GB at P = 15):
`maps.sharded_local` splits the images over the devices of a mesh, each device builds and scans only its
own patches, and returns per query patch the log-sum-exp statistics (m, s, num) [B·1024, F], merged
exactly by pmax/psum — memory and time divide by the device count, communication is B·1024·F floats.
"""
import os

import jax
import jax.numpy as jnp
import numpy as np

import repro_tools as rt
from common import Progress, trained_job
from configs import molrg as molrg_config
from configs.experiments import which_map as which_map_config
from jaxrepro import data as data_lib
from jaxrepro import maps
from jaxrepro.samplers import latents_from_seeds

_call = jax.jit(lambda fn, x, sigma: fn(x, sigma))          # fn: a pytree denoiser (network Partial or map)


def trajectory_states(net, seeds, shape, sigmas, stride):
    """{σ_i: x_i [S, *shape]} along the network's Euler PF-ODE paths from the seeds (every stride-th σ and the last)."""
    x = latents_from_seeds(seeds, shape) * float(sigmas[0])
    keep = set(range(0, len(sigmas) - 1, stride)) | {len(sigmas) - 2}
    states = {}
    for i in range(len(sigmas) - 1):
        s, s_next = float(sigmas[i]), float(sigmas[i + 1])
        if i in keep:
            states[s] = np.asarray(x)
        x = x + (s_next - s) * (x - _call(net, x, jnp.full((len(x),), s, x.dtype))) / s
    return states


def _apply(fn, x, sigma):
    x = jnp.asarray(x)
    return np.asarray(_call(fn, x, jnp.full((len(x),), sigma, x.dtype)))


def score(fn, states, ref):
    """r² and gap of map fn against the model outputs ref {σ: D_θ} at the states {σ: x}."""
    r2, gap = {}, {}
    for s, x in states.items():
        out = _apply(fn, x, s)
        r2[s] = maps.r_squared(out, ref[s])
        gap[s] = float(np.mean(np.sum((out - ref[s]).reshape(len(x), -1) ** 2, axis=1)))
    return {"r2": {f"{s:.4g}": v for s, v in r2.items()}, "gap": {f"{s:.4g}": v for s, v in gap.items()},
            "r2_median": float(np.median(list(r2.values()))), "gap_mean": float(np.mean(list(gap.values())))}


def calibrated_scores(sizes, edges, table, ref):
    """score()'s record of the calibrated LS / ELS from the calibration table: gap = (1 − r²)·Σ‖D_θ − mean‖² / B."""
    r2 = {s: max(t.values()) for s, t in table.items()}
    tot = {s: float(np.sum((ref[s] - ref[s].mean(0, keepdims=True)) ** 2)) / len(ref[s]) for s in table}
    return {"r2": {f"{s:.4g}": v for s, v in r2.items()}, "gap": {f"{s:.4g}": (1 - r2[s]) * tot[s] for s in r2},
            "r2_median": float(np.median(list(r2.values()))),
            "gap_mean": float(np.mean([(1 - r2[s]) * tot[s] for s in r2])), "sizes": list(sizes), "edges": list(edges),
            "per_size": {f"{s:.4g}": {str(p): r for p, r in t.items()} for s, t in table.items()}}


def map_scores(cfg, job, net, bases=None, patch_maps=True):
    """{map: scores} for one trained model (Theorem 1, calibrated LS / ELS, best-λ σ-CFDM, population)."""
    states = trajectory_states(net, np.arange(cfg.num_queries), job.shape, job.sigmas, cfg.sigma_stride)
    ref = {s: _apply(net, x, s) for s, x in states.items()}
    net_call = lambda x, s: _call(net, x, s)  # noqa: E731
    out = {"theorem1": score(maps.make_map("theorem1", job.images), states, ref)}
    for name in ("ls", "els") if patch_maps else ():
        sizes, edges, table = maps.calibrate(net_call, job.images, states, cfg.candidates, equivariant=name == "els")
        out[name] = calibrated_scores(sizes, edges, table, ref)
    by_lam = {lam: score(maps.make_map("smoothed", job.images, lam=lam, num_noise=cfg.num_noise), states, ref)
              for lam in cfg.lams}
    best = max(by_lam, key=lambda lam: by_lam[lam]["r2_median"])
    out["smoothed"] = {**by_lam[best], "lam": best, "r2_median_by_lam": {str(k): v["r2_median"] for k, v in by_lam.items()}}
    if bases is not None:
        out["population"] = score(maps.make_map("population", job.images, bases=bases), states, ref)
    return out


def molrg_job(cfg, n, cap, log):
    """An MLP of capacity `cap` trained on the first n MoLRG samples (an ordinary run directory)."""
    c = molrg_config.get_config()
    c.data.n, c.model = int(n), dict(cfg.molrg_capacities[cap])
    c.train.update(num_steps=cfg.molrg_steps, ckpt_every=cfg.molrg_steps, log_every=cfg.molrg_steps)
    c.sample.num_seeds = cfg.num_queries
    return trained_job(c, os.path.join(cfg.models_dir, f"molrg_{cap}_n{n}"), log=log)


def crossover(ns, far_emp, far_pop):
    """The N (log-interpolated) from which the model is closer to the population than to Theorem 1 (None: never)."""
    d = np.asarray(far_emp, float) - np.asarray(far_pop, float)          # > 0: closer to the population
    if d[0] > 0:
        return float(ns[0])                                              # already at the smallest N
    for i in range(1, len(ns)):
        if d[i - 1] <= 0 < d[i]:
            f = -d[i - 1] / (d[i] - d[i - 1])
            return float(np.exp(np.log(ns[i - 1]) + f * (np.log(ns[i]) - np.log(ns[i - 1]))))
    return None


def molrg_crossovers(molrg):
    """Per capacity: the crossover N by mean gap and by median r² (1 − r² as the distance)."""
    out = {}
    for cap, rows in molrg.items():
        ns, col = [r["n"] for r in rows], lambda m, k: [r[m][k] for r in rows]   # noqa: E731
        out[cap] = {"by_gap": crossover(ns, col("theorem1", "gap_mean"), col("population", "gap_mean")),
                    "by_r2": crossover(ns, [1 - v for v in col("theorem1", "r2_median")],
                                       [1 - v for v in col("population", "r2_median")])}
    return out


def run(cfg, log=print):
    quiet = lambda *a: None  # noqa: E731
    models = [(tag, n, ov) for tag, ov in cfg.models.items() for n in cfg.ns]
    models += [("ddpmpp_tiny", n, cfg.ddpm) for n in cfg.ddpm_ns]
    caps = list(cfg.molrg_capacities)
    prog = Progress(len(models) + len(caps) * len(cfg.molrg_ns), log)
    digits = {}
    for tag, n, ov in models:
        job = rt.model_job(cfg, n, tag, ov, log=quiet)
        digits.setdefault(tag, []).append({"n": int(n), **map_scores(cfg, job, rt.net_fn(job))})
        prog.step(f"{cfg.data} {tag} N={n}: " + "  ".join(
            f"{k} {v['r2_median']:.2f}" for k, v in digits[tag][-1].items() if k != "n"))
    bases = data_lib.molrg()[2]
    molrg = {}
    for cap in caps:
        for n in cfg.molrg_ns:
            job = molrg_job(cfg, n, cap, quiet)
            molrg.setdefault(cap, []).append({"n": int(n), **map_scores(cfg, job, rt.net_fn(job), bases, False)})
            r = molrg[cap][-1]
            prog.step(f"molrg {cap} N={n}: gap Theorem 1 {r['theorem1']['gap_mean']:.4f} "
                      f"population {r['population']['gap_mean']:.4f}")
    cross = molrg_crossovers(molrg)
    log("MoLRG crossover N (closer to the population than to Theorem 1 from): " + str(cross))
    return {"config": cfg.to_dict(), "digits": digits, "molrg": molrg, "molrg_crossover_n": cross}


MAP_NAMES = ("theorem1", "ls", "els", "smoothed", "population")


def figure(res, path):
    """r² (median over σ) vs N per map, one panel per model family; MoLRG gaps to the two oracles vs N."""
    panels = []
    for tag, rows in list(res["digits"].items()) + list(res["molrg"].items()):
        n = [r["n"] for r in rows]
        where = "digits" if tag in res["digits"] else "MoLRG"
        panels.append((f"{where} {tag}", "median r² over σ",
                       {m: (n, [r[m]["r2_median"] for r in rows]) for m in MAP_NAMES if m in rows[0]}, "N"))
    series = {}
    for cap, rows in res["molrg"].items():
        n = [r["n"] for r in rows]
        series[f"{cap} vs Theorem 1"] = (n, [r["theorem1"]["gap_mean"] for r in rows])
        series[f"{cap} vs population"] = (n, [r["population"]["gap_mean"] for r in rows])
    panels.append(("MoLRG: model's gap to each oracle", "mean over σ of E‖D_θ − D‖²", series, "N"))
    return rt.panels_figure(panels, path, suptitle="which analytic map does the trained denoiser follow?")


def main():
    rt.experiment_main(__doc__, "which_map", which_map_config, run, figure)


if __name__ == "__main__":
    main()

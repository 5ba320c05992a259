"""Where along the ODE does a trained network pick a different training image than the oracle?

    python experiments/decision_sigma.py [--workdir runs/quickstart_n32] [--out runs/experiments/decision_sigma]

Hybrid denoisers switch between the oracle D* and the network D_θ at a noise level s:
  "oracle above s":  D* for σ > s, D_θ for σ ≤ s   (s → ∞: the network alone; s → 0: the oracle alone)
  "network above s": D_θ for σ > s, D* for σ ≤ s
Each is sampled from the run's seeds with its sampler and scored by the same-image rate against the
oracle's samples. The band of s over which "network above s" falls from 1 is where the network's
errors send trajectories into another training image's basin — what limits the memorization rate.
Writes results.json and decision_sigma.png.
"""
import argparse
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from common import write_results  # noqa: E402
from repro_tools import save_figure  # noqa: E402
from jaxrepro import metrics  # noqa: E402
from jaxrepro.compare import sample_seeds  # noqa: E402
from jaxrepro.run import Job, load_workdir_config  # noqa: E402


def _hybrid(high, low, s, x, sigma, labels=None):
    """high(x, σ) where σ > s, else low(x, σ); x [B, ...], σ scalar or [B]."""
    above = (jnp.broadcast_to(sigma, x.shape[:1]) > s).reshape((-1,) + (1,) * (x.ndim - 1))
    return jnp.where(above, high(x, sigma), low(x, sigma))


def hybrid(high, low, s):
    """Denoiser that is `high` above noise level s and `low` at or below it (a pytree, as samplers take)."""
    return jax.tree_util.Partial(_hybrid, high, low, jnp.float32(s))


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workdir", default="runs/quickstart_n32")
    parser.add_argument("--out", default="runs/experiments/decision_sigma")
    args = parser.parse_args()
    job = Job(load_workdir_config(args.workdir), args.workdir)
    if job.num_classes:
        raise SystemExit(f"{args.workdir} is a conditional run; this diagnostic takes unconditional runs")
    net, oracle = job._net(job.ema_params()), job._oracle()
    seeds = job._seeds("sample")
    grid = np.asarray(job.sigmas)[:-1]                                   # the sampler's σ_i > 0
    switches = np.concatenate([[grid[0] * 2], (grid[:-1] * grid[1:]) ** 0.5, [grid[-1] / 2]])  # between steps

    def nearest(den):
        x = sample_seeds(den, seeds, job.shape, job.sigmas, job.config.sample.solver, **job.sample_kw)
        return np.asarray(metrics.top_k_similar(metrics.quantize(x), job.images, 1)[1][:, 0])

    ref = nearest(oracle)
    rows = []
    for s in switches:
        row = {"switch_sigma": float(s),
               "oracle_above": float(np.mean(nearest(hybrid(oracle, net, s)) == ref)),
               "network_above": float(np.mean(nearest(hybrid(net, oracle, s)) == ref))}
        rows.append(row)
        print(f"s = {s:8.4f}  same image as the oracle: oracle above s {row['oracle_above']:.3f}   "
              f"network above s {row['network_above']:.3f}", flush=True)
    os.makedirs(args.out, exist_ok=True)
    write_results(args.out, {"workdir": os.path.abspath(args.workdir), "num_train": len(job.images),
                             "num_seeds": len(seeds), "sigmas": [float(v) for v in job.sigmas], "rows": rows})

    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    s = [r["switch_sigma"] for r in rows]
    ax.semilogx(s, [r["network_above"] for r in rows], "o-", label="network for σ > s, oracle below")
    ax.semilogx(s, [r["oracle_above"] for r in rows], "s-", label="oracle for σ > s, network below")
    ax.set(xlabel="switch noise level s", ylabel="same training image as the oracle",
           title=f"where the network's basin choices differ (N = {len(job.images)})")
    ax.legend(fontsize=8)
    save_figure(fig, os.path.join(args.out, "decision_sigma.png"))


if __name__ == "__main__":
    main()

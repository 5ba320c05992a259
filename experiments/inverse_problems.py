"""Inverse problems: deterministic DPS with two trained networks and the optimal denoiser (PAPER.md §5).

    python experiments/inverse_problems.py [--config small|paper] [--out DIR] [--models DIR]

For each regime N and each operator (box inpainting, 2× super-resolution, Gaussian blur) the same
measurements z = A(x) of num_images images are reconstructed by jaxrepro.inverse.dps_sample from the
same seeds with each model's denoiser and with the optimal denoiser of the training set. Reports RP
between the two models' reconstructions and against the oracle's (quantized, the config's descriptor
and threshold), the measurement residual ‖A x̂ − z‖ / ‖z‖ and the RMS error to the true image; writes
results.json and inverse_problems_n{N}.png (true | measurement | model 1 | model 2 | oracle).
The measured images are held out of the training set when N < the data set size; at N = 1797 (all
digits) they are training images, so the oracle can recover them exactly.
"""
import os

import jax.numpy as jnp
import numpy as np

import repro_tools as rt
from common import Progress
from configs.experiments import inverse_problems as inverse_config
from jaxrepro import data as data_lib
from jaxrepro import plots
from jaxrepro.inverse import dps_sample, make_operator
from jaxrepro.kernels import edm_sigmas
from jaxrepro.samplers import latents_from_seeds


def measured_images(job, k):
    """k images to measure: held out of the job's training subset, else its first k training images."""
    c = job.config.data
    if c.name.startswith("cifar"):
        return data_lib.load_dataset(c.name, c.data_dir or None, split="test")[0][:k], "test split"
    full, _ = data_lib.load_dataset(c.name, c.data_dir or None)
    rest = np.random.default_rng(c.subset_seed).permutation(len(full))[c.n:]   # the complement of data.subset
    if len(rest) >= k:
        return full[rest[:k]], "held out"
    return job.images[:k], "training images"


def shown(op_name, z, shape):
    """The measurement as an image for the figure (2× pooled images repeated back to full size)."""
    z = np.asarray(z)
    return np.repeat(np.repeat(z, 2, axis=1), 2, axis=2) if z.shape[1:] != shape else z


def run(cfg, log=print):
    out = {"config": cfg.to_dict(), "regimes": []}
    names = list(cfg.models)
    prog = Progress(len(cfg.ns) * len(cfg.operators), log)
    sigmas = edm_sigmas(cfg.dps_steps)
    for n in cfg.ns:
        jobs = {tag: rt.model_job(cfg, n, tag, over, log=lambda *a: None) for tag, over in cfg.models.items()}
        ref = jobs[names[0]]
        fns = {tag: rt.net_fn(job) for tag, job in jobs.items()}
        fns["oracle"] = rt.oracle_fn(ref)
        truth, source = measured_images(ref, cfg.num_images)
        seeds = np.arange(len(truth))
        lat = latents_from_seeds(seeds, ref.shape)
        sc = rt.scorer_for(cfg, ref)
        rec, rows, titles = {"n": int(n), "measured": source, "num_images": len(truth), "operators": {}}, [], []
        for op_name in cfg.operators:
            op = make_operator(op_name, ref.shape, **({"blur_sigma": cfg.blur_sigma} if op_name == "blur" else {}))
            z = op(jnp.asarray(truth))
            z_norm = np.linalg.norm(np.asarray(z).reshape(len(z), -1), axis=1)
            xs, r = {}, {}
            for tag, fn in fns.items():
                x, res = dps_sample(fn, lat, sigmas, op, z, cfg.step_size)
                xs[tag] = np.clip(np.asarray(x), -1, 1)
                err = np.sqrt(np.mean((xs[tag] - truth).reshape(len(z), -1) ** 2, 1))      # [images]
                r[tag] = {"residual_rel": float(np.mean(np.asarray(res) / z_norm)), "rmse_to_truth": float(err.mean())}
            pairs = [(names[0], names[1]), (names[0], "oracle"), (names[1], "oracle")]
            r["rp"] = {f"{a}|{b}": sc.pair(xs[a], xs[b], seeds)["rp"] for a, b in pairs}
            r["same_image_rate"] = {f"{a}|{b}": sc.pair(xs[a], xs[b], seeds)["same_image_rate"] for a, b in pairs}
            rec["operators"][op_name] = r
            log(f"N={n} {op_name}: RP " + " ".join(f"{k} {v:.2f}" for k, v in r["rp"].items()) + "; residual/‖z‖ "
                + " ".join(f"{t} {r[t]['residual_rel']:.3f}" for t in fns))
            rows += [truth[:12], shown(op_name, z[:12], ref.shape)] + [xs[t][:12] for t in fns]
            titles += [f"{op_name}: true", "measured"] + list(fns)
            prog.step(f"N={n} {op_name}")
        plots.image_rows(rows, os.path.join(cfg.out_dir, f"inverse_problems_n{n}.png"), titles, max_cols=12)
        out["regimes"].append(rec)
    return out


def main():
    rt.experiment_main(__doc__, "inverse_problems", inverse_config, run, figures="inverse_problems_n*.png")


if __name__ == "__main__":
    main()

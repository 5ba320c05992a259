"""Learned vs optimal denoiser: same seeds, same solver and grid → scores, denoiser gap vs σ, figures.

Writes to the workdir: compare.json, compare_samples.npz (both float sample sets and their seeds),
compare_grid.png (network | oracle | nearest training image), denoiser_gap.png and similarity_hist.png.
As the authors do, samples are clipped to [−1, 1] and quantized to uint8 before any descriptor or
nearest-neighbour search. Conditional denoisers take D(x, σ, labels); labels [seeds] are bound per batch.
"""
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxrepro import distributed, metrics, plots
from jaxrepro.descriptors import get_descriptor
from jaxrepro.precond import with_labels
from jaxrepro.samplers import latents_from_seeds, sample


def _bind(denoise_fn, labels, lo, hi):
    return denoise_fn if labels is None else with_labels(denoise_fn, np.asarray(labels)[lo:hi])


def sample_seeds(denoise_fn, seeds, shape, sigmas, solver="heun", batch=256, log=None, name="", labels=None,
                 **sample_kw):
    """Samples [len(seeds), *shape] from per-seed latents, in batches (results independent of batch).

    labels [len(seeds)] (conditional denoisers D(x, σ, labels)) are bound batch by batch; sample_kw
    go to samplers.sample (schedule, scaling, sigma_range). In a multi-process run each process samples
    its share of the seeds and every process returns all images.
    """
    seeds = np.asarray(seeds)
    if labels is not None and np.shape(labels) != seeds.shape:
        raise ValueError(f"labels must be one per seed: {np.shape(labels)} vs {seeds.shape}")
    if jax.process_count() == 1:
        return _sample_rows(denoise_fn, seeds, shape, sigmas, solver, batch, log, name, labels, sample_kw)
    mine = distributed.my_seeds(np.arange(len(seeds)))            # row indices of this process's share
    local = _sample_rows(denoise_fn, seeds[mine], shape, sigmas, solver, batch, log, name,
                         None if labels is None else np.asarray(labels)[mine], sample_kw)
    return distributed.gather_rows(local, len(seeds))


def _sample_rows(denoise_fn, seeds, shape, sigmas, solver, batch, log, name, labels, sample_kw):
    out = []
    for i in range(0, len(seeds), batch):
        lat = latents_from_seeds(seeds[i:i + batch], shape)
        fn = _bind(denoise_fn, labels, i, i + batch)
        out.append(np.asarray(sample(fn, lat, sigmas, solver, **sample_kw)))
        if log:
            log(f"  sampled {name} {min(i + batch, len(seeds))}/{len(seeds)}")
    return np.concatenate(out)


@jax.jit
def _call(denoise_fn, x, sigma):
    """denoise_fn(x, σ) under jit; denoise_fn is a pytree (Partial or Oracle)."""
    return denoise_fn(x, sigma)


def denoiser_gap(net_fn, oracle_fn, train_images, sigmas, num_images=256, seed=0, train_labels=None):
    """{σ: E‖D_θ(y + σn; σ) − D*(y + σn; σ)‖²} over (up to) num_images training images y (with their own labels)."""
    y = jnp.asarray(train_images[:num_images])
    net_fn, oracle_fn = (_bind(f, train_labels, 0, len(y)) for f in (net_fn, oracle_fn))
    gaps = {}
    for i, sigma in enumerate(s for s in np.asarray(sigmas) if s > 0):
        n = jax.random.normal(jax.random.fold_in(jax.random.PRNGKey(seed), i), y.shape)
        x = y + float(sigma) * n
        sig = jnp.full((len(y),), float(sigma), jnp.float32)
        diff = _call(net_fn, x, sig) - _call(oracle_fn, x, sig)
        gaps[float(sigma)] = float(jnp.mean(jnp.sum(diff.reshape(len(y), -1) ** 2, axis=1)))
    return gaps


def compare(net_fn, oracle_fn, train_images, workdir, seeds, sigmas, solver="heun", descriptor="pixel_cosine",
            fpr=0.01, gap_images=256, log=print, *, labels=None, train_labels=None, **sample_kw):
    """Run the comparison and write its records; returns the compare.json dict.

    labels [seeds] / train_labels [N]: class labels of a conditional run (seed's class, each training
    image's own class); sample_kw go to the sampler (schedule, scaling, sigma_range).
    """
    t0 = time.time()
    shape = train_images.shape[1:]
    log(f"compare: sampling network and oracle from {len(seeds)} seeds ({solver}, {len(sigmas) - 1} steps)")
    x_net = sample_seeds(net_fn, seeds, shape, sigmas, solver, log=log, name="network", labels=labels, **sample_kw)
    x_orc = sample_seeds(oracle_fn, seeds, shape, sigmas, solver, log=log, name="oracle", labels=labels, **sample_kw)
    if not (np.all(np.isfinite(x_net)) and np.all(np.isfinite(x_orc))):
        raise FloatingPointError("non-finite samples: the network or the oracle diverged")
    q_net, q_orc = metrics.quantize(x_net), metrics.quantize(x_orc)      # as saved to PNG by the authors

    desc = get_descriptor(descriptor) if isinstance(descriptor, str) else descriptor
    f_net, f_orc = desc.embed(q_net), desc.embed(q_orc)
    pair = np.asarray(metrics.pair_scores(f_net, f_orc, seeds, seeds, desc))
    ratio_net, nn_net = metrics.gu_ratio(q_net, train_images)       # one nearest-neighbour pass per set
    ratio_orc, nn_orc = metrics.gu_ratio(q_orc, train_images)
    nn_net, nn_orc = np.asarray(nn_net), np.asarray(nn_orc)
    same = float(np.mean(nn_net == nn_orc))
    # unrelated pairs: different seeds *and* different nearest training images (≈ 1/N of different-seed
    # pairs share one in the memorization regime; counting them would put the threshold among identical images)
    unrelated = np.asarray(metrics.unrelated_pairs(f_net, desc, other=f_orc))
    differ = nn_net != np.roll(nn_orc, -1)
    collide = float(1 - differ.mean())
    cal = metrics.calibrate_threshold(unrelated[differ], fpr=fpr) if differ.sum() >= 1 / fpr else None
    threshold = cal["threshold"] if cal else float(np.max(unrelated[differ], initial=-np.inf))
    fixed = getattr(desc, "threshold", None)
    train_feats = desc.embed(train_images)
    gl_paper = {who: metrics.gl_score(f, train_feats, desc, fixed) if fixed is not None else None
                for who, f in (("network", f_net), ("oracle", f_orc))}
    log("compare: denoiser gap over the σ grid")
    gaps = denoiser_gap(net_fn, oracle_fn, train_images, sigmas, gap_images, train_labels=train_labels)
    result = {
        "num_seeds": int(len(seeds)), "first_seed": int(np.min(seeds)), "solver": solver,
        "sigmas": [float(s) for s in sigmas], "num_train": int(len(train_images)),
        "sampler": {k: (list(v) if isinstance(v, tuple) else v) for k, v in sample_kw.items()},
        "same_image_rate": same, "unrelated_same_image_rate": collide, "descriptor": desc.name,
        "rp": float(np.mean(pair > threshold)), "rp_threshold": threshold, "rp_threshold_calibration": cal,
        "rp_fixed": float(np.mean(pair > fixed)) if fixed is not None else None, "fixed_threshold": fixed,
        "similarity_same_seed": {"mean": float(pair.mean()), "quantiles_5_50_95": np.quantile(pair, [.05, .5, .95]).tolist()},
        "gl_network": float(np.mean(np.asarray(ratio_net) >= metrics.GU_RATIO)),
        "gl_oracle": float(np.mean(np.asarray(ratio_orc) >= metrics.GU_RATIO)),
        "gl_paper_network": gl_paper["network"], "gl_paper_oracle": gl_paper["oracle"],
        "gu_ratio_network_median": float(np.median(ratio_net)),
        "mean_abs_pixel_diff": float(np.mean(np.abs(x_net - x_orc))),
        "denoiser_gap": {f"{s:.6g}": g for s, g in gaps.items()},
        "seconds": round(time.time() - t0, 1),
    }
    if distributed.is_main():
        _write(workdir, result, x_net, x_orc, seeds, train_images, nn_net, gaps, pair, unrelated[differ], threshold, desc)
    fixed_txt = f"  RP {result['rp_fixed']:.3f} at fixed {fixed}" if fixed is not None else ""
    log(f"compare: same-image rate {same:.3f}  RP {result['rp']:.3f} (calibrated threshold {threshold:.3f}){fixed_txt}  "
        f"GL network {result['gl_network']:.3f}  GL oracle {result['gl_oracle']:.3f}  ({result['seconds']} s)")
    return result


def _write(workdir, result, x_net, x_orc, seeds, train_images, nn_net, gaps, pair, unrelated, threshold, desc):
    """compare.json (atomically), the samples and the three figures."""
    os.makedirs(workdir, exist_ok=True)
    tmp = os.path.join(workdir, "compare.json.tmp")
    with open(tmp, "w") as f:
        json.dump(result, f, indent=1)
    os.replace(tmp, os.path.join(workdir, "compare.json"))
    np.savez(os.path.join(workdir, "compare_samples.npz"), network=x_net, oracle=x_orc, seeds=np.asarray(seeds))
    k = min(16, len(seeds))
    plots.image_rows([x_net[:k], x_orc[:k], np.asarray(train_images)[nn_net[:k]]],
                     os.path.join(workdir, "compare_grid.png"), ["network", "oracle", "nearest\ntrain"])
    plots.line_plot(list(gaps), {"E‖D_θ − D*‖²": list(gaps.values())}, os.path.join(workdir, "denoiser_gap.png"),
                    "σ", "denoiser gap", f"N = {len(train_images)}, {len(seeds)} seeds")
    plots.histogram({"same seed": pair, "different seeds, different images": unrelated},
                    os.path.join(workdir, "similarity_hist.png"), threshold, f"{desc.name} similarity",
                    "network vs oracle samples")

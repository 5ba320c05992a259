"""Learned vs optimal denoiser: same seeds, same solver and grid → scores, denoiser gap vs σ, figures.

Writes to the workdir: compare.json, compare_samples.npz (both sample sets and their seeds), compare_grid.png (network | oracle | nearest training image),
denoiser_gap.png and similarity_hist.png.
"""
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxrepro import metrics, plots
from jaxrepro.descriptors import get_descriptor
from jaxrepro.samplers import latents_from_seeds, sample


def sample_seeds(denoise_fn, seeds, shape, sigmas, solver="heun", batch=256, log=None, name=""):
    """Samples [len(seeds), *shape] from per-seed latents, in batches (results independent of batch)."""
    seeds = np.asarray(seeds)
    out = []
    for i in range(0, len(seeds), batch):
        lat = latents_from_seeds(seeds[i:i + batch], shape)
        out.append(np.asarray(sample(denoise_fn, lat, sigmas, solver)))
        if log:
            log(f"  sampled {name} {min(i + batch, len(seeds))}/{len(seeds)}")
    return np.concatenate(out)


@jax.jit
def _call(denoise_fn, x, sigma):
    """denoise_fn(x, σ) under jit; denoise_fn is a pytree (Partial or Oracle)."""
    return denoise_fn(x, sigma)


def denoiser_gap(net_fn, oracle_fn, train_images, sigmas, num_images=256, seed=0):
    """{σ: E‖D_θ(y + σn; σ) − D*(y + σn; σ)‖²} over (up to) num_images training images y."""
    y = jnp.asarray(train_images[:num_images])
    gaps = {}
    for i, sigma in enumerate(s for s in np.asarray(sigmas) if s > 0):
        n = jax.random.normal(jax.random.fold_in(jax.random.PRNGKey(seed), i), y.shape)
        x = y + float(sigma) * n
        sig = jnp.full((len(y),), float(sigma), jnp.float32)
        diff = _call(net_fn, x, sig) - _call(oracle_fn, x, sig)
        gaps[float(sigma)] = float(jnp.mean(jnp.sum(diff.reshape(len(y), -1) ** 2, axis=1)))
    return gaps


def compare(net_fn, oracle_fn, train_images, workdir, seeds, sigmas, solver="heun", descriptor="pixel_cosine",
            fpr=0.01, gap_images=256, log=print):
    """Run the comparison and write its records; returns the compare.json dict."""
    t0 = time.time()
    shape = train_images.shape[1:]
    log(f"compare: sampling network and oracle from {len(seeds)} seeds ({solver}, {len(sigmas) - 1} steps)")
    x_net = sample_seeds(net_fn, seeds, shape, sigmas, solver, log=log, name="network")
    x_orc = sample_seeds(oracle_fn, seeds, shape, sigmas, solver, log=log, name="oracle")
    if not (np.all(np.isfinite(x_net)) and np.all(np.isfinite(x_orc))):
        raise FloatingPointError("non-finite samples: the network or the oracle diverged")

    desc = get_descriptor(descriptor) if isinstance(descriptor, str) else descriptor
    f_net, f_orc = desc.embed(x_net), desc.embed(x_orc)
    pair = np.asarray(metrics.pair_scores(f_net, f_orc, seeds, seeds, desc))
    unrelated = np.asarray(metrics.unrelated_pairs(f_net, desc, other=f_orc))        # different seeds
    cal = metrics.calibrate_threshold(unrelated, fpr=fpr) if len(seeds) >= 1 / fpr else None
    threshold = cal["threshold"] if cal else float(np.quantile(unrelated, 1.0))
    ratio_net, nn_net = metrics.gu_ratio(x_net, train_images)       # one nearest-neighbour pass per set
    ratio_orc, nn_orc = metrics.gu_ratio(x_orc, train_images)
    nn_net, nn_orc = np.asarray(nn_net), np.asarray(nn_orc)
    same = float(np.mean(nn_net == nn_orc))
    # different seeds that land on one training image: ≈ 1/N in the memorization regime; a calibration
    # fpr below this rate puts the threshold among identical images
    collide = float(np.mean(nn_net == np.roll(nn_orc, -1)))
    if cal and fpr < collide:
        log(f"compare: note: {collide:.3f} of different-seed pairs share their nearest training image, "
            f"more than fpr={fpr}; RP at this threshold undercounts (raise compare.fpr)")
    log("compare: denoiser gap over the σ grid")
    gaps = denoiser_gap(net_fn, oracle_fn, train_images, sigmas, gap_images)
    result = {
        "num_seeds": int(len(seeds)), "first_seed": int(np.min(seeds)), "solver": solver,
        "sigmas": [float(s) for s in sigmas], "num_train": int(len(train_images)),
        "same_image_rate": same, "unrelated_same_image_rate": collide,
        "rp": float(np.mean(pair > threshold)), "rp_threshold": threshold, "descriptor": desc.name,
        "rp_threshold_calibration": cal,
        "similarity_same_seed": {"mean": float(pair.mean()), "quantiles_5_50_95": np.quantile(pair, [.05, .5, .95]).tolist()},
        "gl_network": float(np.mean(np.asarray(ratio_net) >= metrics.GU_RATIO)),
        "gl_oracle": float(np.mean(np.asarray(ratio_orc) >= metrics.GU_RATIO)),
        "gu_ratio_network_median": float(np.median(ratio_net)),
        "mean_abs_pixel_diff": float(np.mean(np.abs(x_net - x_orc))),
        "denoiser_gap": {f"{s:.6g}": g for s, g in gaps.items()},
        "seconds": round(time.time() - t0, 1),
    }
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
    plots.histogram({"same seed": pair, "different seeds": unrelated}, os.path.join(workdir, "similarity_hist.png"),
                    threshold, f"{desc.name} similarity", "network vs oracle samples")
    log(f"compare: same-image rate {same:.3f}  RP {result['rp']:.3f} (threshold {threshold:.3f})  "
        f"GL network {result['gl_network']:.3f}  GL oracle {result['gl_oracle']:.3f}  ({result['seconds']} s)")
    return result

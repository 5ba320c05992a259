"""Throughput at scale on whatever device JAX sees: oracle sampling and DDPM++ training, with the device name.

    python benchmarks/throughput.py            # full size on a GPU/TPU, reduced on a CPU
    python benchmarks/throughput.py --full     # full size anywhere (hours on a CPU)

Full size: oracle sampling with Heun, 18 steps (35 evaluations) against N = 50,000 images of 32×32×3
(D = 3,072), batch 256, reported as images/s and as a fraction of the device's float32 matmul peak
(XLA's dot at precision HIGHEST on the oracle's chunk shapes, measured in the same run); DDPM++ C = 128
(EDM's CIFAR-10 network) training steps at batch 128, as images/s. Reduced (CPU): N = 2,048, batch 64,
DDPM++ C = 32 at batch 16. One JSON object per line.
"""
import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np
from oracle import timed, xla_peak          # benchmarks/oracle.py, beside this script
from train import bench as train_bench      # benchmarks/train.py

from jaxrepro.kernels import edm_sigmas
from jaxrepro.oracle import make_optimal_denoiser
from jaxrepro.samplers import latents_from_seeds, sample

SHAPE = (32, 32, 3)


def oracle_sampling(n, batch, steps=18):
    """Images/s of Heun sampling (2·steps − 1 evaluations) from the oracle of n random images, and % of peak."""
    rng = np.random.default_rng(0)
    oracle = make_optimal_denoiser(jnp.asarray(rng.uniform(-1, 1, (n, *SHAPE)).astype(np.float32)))
    lat = latents_from_seeds(np.arange(batch), SHAPE)
    sig = edm_sigmas(steps)
    peak_before = xla_peak()
    sec = float(np.median(timed(lambda: sample(oracle, lat, sig, "heun").block_until_ready(), 2)))
    peak = max(peak_before, xla_peak())
    nfe = 2 * steps - 1
    gflops = nfe * 4 * batch * n * int(np.prod(SHAPE)) / sec / 1e9
    return {"bench": "oracle_sampling", "N": n, "D": int(np.prod(SHAPE)), "batch": batch, "nfe": nfe,
            "seconds": round(sec, 3), "images_per_s": round(batch / sec, 2), "gflops": round(gflops, 1),
            "peak_gflops": round(peak, 1), "fraction_of_peak": round(gflops / peak, 3)}


def ddpmpp_training(name, batch, steps):
    """Images/s of the jitted EDM train step (forward, backward, Adam, EMA) of a DDPM++ preset."""
    return train_bench(name, SHAPE, batch, steps)


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--full", action="store_true", help="full size even on a CPU")
    args = parser.parse_args()
    full = args.full or jax.default_backend() != "cpu"
    dev = jax.devices()[0]
    print(json.dumps({"device": getattr(dev, "device_kind", str(dev)), "backend": jax.default_backend(),
                      "devices": jax.device_count(), "size": "full" if full else "reduced (CPU)"}))
    print(json.dumps(oracle_sampling(50_000 if full else 2048, 256 if full else 64)))
    print(json.dumps(ddpmpp_training("ddpmpp_c128" if full else "ddpmpp_c32", 128 if full else 16,
                                     3 if full else 2)))


if __name__ == "__main__":
    main()

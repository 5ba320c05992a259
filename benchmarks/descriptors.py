"""SSCD descriptor throughput (images/s at 320×320) for both released trunks, random weights.

Run: `python benchmarks/descriptors.py [--batch 4 --repeats 3]`; median of the timed batches after compilation.
"""
import argparse
import json
import platform
import time

import jax
import numpy as np

from jaxrepro.descriptors.sscd import ARCHS, SSCD, preprocess


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(json.dumps({"machine": platform.processor() or platform.machine(), "backend": jax.default_backend()}))
    images = np.random.default_rng(0).uniform(-1, 1, (args.batch, 32, 32, 3)).astype(np.float32)
    for name, arch in ARCHS.items():
        model = SSCD(arch)
        variables = jax.jit(model.init)(jax.random.PRNGKey(0), np.zeros((1, 64, 64, 3), np.float32))
        embed = jax.jit(lambda v, x: model.apply(v, preprocess(x, 320))[0])
        t0 = time.perf_counter()
        embed(variables, images).block_until_ready()
        compile_s = time.perf_counter() - t0
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            embed(variables, images).block_until_ready()
            times.append(time.perf_counter() - t0)
        print(json.dumps({"bench": "sscd_embed", "arch": name, "input": [320, 320, 3], "batch": args.batch,
                          "images_per_s": round(args.batch / float(np.median(times)), 2),
                          "compile_s": round(compile_s, 1)}), flush=True)


if __name__ == "__main__":
    main()

"""Training throughput on this machine: steps/s and images/s, median over steps after compilation.

Run: `python benchmarks/train.py [--steps 5]`. DDPM++ C=32 and C=64 on 32×32×3 (batch 64) and the
MLP on 8×8×1 (batch 64), EDM loss and preconditioning, one device.
"""
import argparse
import json
import platform
import time

import jax
import numpy as np

from jaxrepro.losses import LossConfig
from jaxrepro.models import ModelApply, get_model, init_params
from jaxrepro.precond import Precond
from jaxrepro.train import TrainConfig, init_state, make_optimizer, make_train_step


def bench(name, shape, batch, steps):
    """Median seconds per step of the jitted train step, plus the compile time."""
    model = get_model(name)
    cfg = TrainConfig(batch_size=batch, lr=1e-4, warmup_images=1)
    opt = make_optimizer(cfg)
    state = init_state(init_params(model, shape, 0), opt)
    step = make_train_step(ModelApply(model), Precond("edm"), LossConfig("edm"), cfg, opt)
    images = np.random.default_rng(0).uniform(-1, 1, (batch, *shape)).astype(np.float32)
    labels, pos = np.zeros(batch, np.int32), np.arange(batch, dtype=np.int32)
    t0 = time.perf_counter()
    state, m = step(state, images, labels, pos)
    jax.block_until_ready(m)
    compile_s = time.perf_counter() - t0
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        state, m = step(state, images, labels, pos)
        jax.block_until_ready(m)
        times.append(time.perf_counter() - t0)
    sec = float(np.median(times))
    return {"bench": "train_step", "model": name, "input": list(shape), "batch": batch,
            "steps_per_s": round(1 / sec, 3), "images_per_s": round(batch / sec, 1),
            "compile_s": round(compile_s, 1), "timed_steps": steps}


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args()
    print(json.dumps({"machine": platform.processor() or platform.machine(), "backend": jax.default_backend()}))
    for name, shape in [("mlp", (8, 8, 1)), ("ddpmpp_c32", (32, 32, 3)), ("ddpmpp_c64", (32, 32, 3))]:
        print(json.dumps(bench(name, shape, 64, args.steps if name != "mlp" else 50)), flush=True)


if __name__ == "__main__":
    main()
